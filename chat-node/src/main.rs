//! The chat-node binary (the server arrives with the next issues).

fn main() {
    println!("chat-node: not yet implemented (the protocol codecs are in the library)");
}
