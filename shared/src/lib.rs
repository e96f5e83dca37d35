//! Types and helpers shared by the proxy and the chat nodes.
