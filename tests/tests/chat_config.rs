//! The `chat-node` binary's refusals of bad settings, as an operator sees them: the process
//! exits with an error at once, naming the flag and its environment variable (the checks
//! named the settings' fields, `ping_timeout`, `history on join`, which no operator wrote),
//! and a Redis URL's password never appears.
//!
//! Build the node first: `cargo build -p chat-node --bin chat-node && cargo test -p tests
//! --test chat_config`.

use tests::chatnode::refused_start as refused;

/// Flags, environment variables, and what the error must name.
type Case = (
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
    &'static str,
);

#[test]
fn bad_values_name_their_flag_and_variable() {
    let cases: &[Case] = &[
        (
            &["--ping-timeout", "0s"],
            &[],
            "--ping-timeout (or CHAT_PING_TIMEOUT)",
        ),
        (
            &[],
            &[("CHAT_PING_INTERVAL", "0s")],
            "--ping-interval (or CHAT_PING_INTERVAL)",
        ),
        (
            &["--max-payload", "0"],
            &[],
            "--max-payload (or CHAT_MAX_PAYLOAD)",
        ),
        (
            &["--history-cap", "0"],
            &[],
            "--history-cap (or CHAT_HISTORY_CAP)",
        ),
        (
            &["--history-on-join", "500"],
            &[],
            "--history-on-join (or CHAT_HISTORY_ON_JOIN)",
        ),
        (
            &[],
            &[("CHAT_MAX_TEXT", "0")],
            "--max-text (or CHAT_MAX_TEXT)",
        ),
        (
            &["--presence-ttl", "1ms"],
            &[],
            "--presence-ttl (or CHAT_PRESENCE_TTL)",
        ),
        (
            &[],
            &[("CHAT_MAX_MEMBERSHIPS", "0")],
            "--max-memberships (or CHAT_MAX_MEMBERSHIPS)",
        ),
        (
            &[],
            &[("CHAT_WS_FLUSH_INTERVAL", "2s")],
            "--ws-flush-interval (or CHAT_WS_FLUSH_INTERVAL)",
        ),
        // Values clap parses: it names the flag itself.
        (
            &[],
            &[("CHAT_MAX_CONNECTIONS", "many")],
            "--max-connections",
        ),
        (&["--rate-limit", "fast"], &[], "--rate-limit"),
        // Past 100 years: a ping interval of 5e11 years overflowed at start.
        (
            &[],
            &[("CHAT_PING_INTERVAL", "500000000000y")],
            "--ping-interval <PING_INTERVAL>': invalid duration \"500000000000y\": longer than 100 years",
        ),
        (
            &["--rate-limit", "10/500000000000y"],
            &[],
            "--rate-limit",
        ),
    ];
    for (args, env, named) in cases {
        let stderr = refused(args, env);
        assert!(
            stderr.contains(named),
            "{args:?} {env:?}: the error should name {named:?}:\n{stderr}"
        );
    }
}

#[test]
fn a_redis_password_is_never_printed() {
    // Nothing listens on port 1: the start fails, and says why without the URL's secret.
    for url in [
        "redis://:s3cret-pw@127.0.0.1:1",
        "redis://user:s3cret-pw@127.0.0.1:1/0",
    ] {
        let stderr = refused(&["--redis", url], &[]);
        assert!(stderr.contains("redis"), "{stderr}");
        assert!(
            !stderr.contains("s3cret-pw"),
            "the password leaked: {stderr}"
        );
        let stderr = refused(&[], &[("CHAT_REDIS_URL", url)]);
        assert!(
            !stderr.contains("s3cret-pw"),
            "the password leaked: {stderr}"
        );
    }
}
