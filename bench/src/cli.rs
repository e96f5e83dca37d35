//! The command line: one subcommand per scenario, options common to all of them, and the
//! `backend` subcommand that runs one of bench's own backends.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Compares balancing strategies and proxies side by side on loopback.
#[derive(Debug, Parser)]
#[command(name = "bench", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Keep-alive HTTP requests, closed loop (max rps) and open loop at fixed rates.
    Http {
        #[command(flatten)]
        common: Common,
        /// Open-loop rates (requests/s, comma separated) measured after the closed loop.
        // A rate of 0 used to run a second closed loop labelled "@0/s".
        #[arg(long, value_delimiter = ',', default_value = "5000",
              value_parser = rate)]
        rates: Vec<u64>,
    },
    /// WebSocket message throughput (closed loop) and round-trip latency at fixed message
    /// rates (open loop).
    WsEcho {
        #[command(flatten)]
        common: Common,
        /// Bytes per message.
        #[arg(long, default_value_t = 32)]
        size: usize,
        /// Open-loop rates (messages/s over all sockets, comma separated) measured after the
        /// closed loop.
        #[arg(long, value_delimiter = ',', default_value = "5000",
              value_parser = rate)]
        rates: Vec<u64>,
    },
    /// Idle WebSockets opened in steps: proxy memory per connection (RSS slope) and spread.
    WsHold {
        #[command(flatten)]
        common: Common,
        /// Open connections after each step (at least two different counts: the memory
        /// per connection is the slope between them).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "1000,2000,4000,6000,8000",
            value_parser = at_least_one
        )]
        steps: Vec<usize>,
    },
    /// One backend much slower than the others: p99 and distribution per strategy.
    Hetero {
        #[command(flatten)]
        common: Common,
        /// Open-loop request rate (requests/s).
        #[arg(long, default_value_t = 2000, value_parser = rate)]
        rate: u64,
        /// Delay of the slow backend (the last one).
        #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
        slow: Duration,
    },
    /// A backend is down while WebSockets are opened, comes back, more are opened.
    Recover {
        #[command(flatten)]
        common: Common,
        /// WebSockets opened in each of the two batches.
        #[arg(long, default_value_t = 60, value_parser = at_least_one)]
        batch: usize,
        /// Time between the backend's restart and the second batch.
        #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
    /// Constant HTTP load and open WebSockets while a backend is killed (or frozen) and
    /// restarted.
    Failover {
        #[command(flatten)]
        common: Common,
        /// Open-loop request rate (requests/s).
        #[arg(long, default_value_t = 1000, value_parser = rate)]
        rate: u64,
        /// WebSockets held open during the run.
        #[arg(long, default_value_t = 30)]
        websockets: usize,
    },
    /// Stickiness and the share of clients remapped when one of N backends leaves.
    Sticky {
        #[command(flatten)]
        common: Common,
        /// Requests per client in each phase.
        #[arg(long, default_value_t = 20, value_parser = at_least_one)]
        requests: usize,
    },
    /// Socket.IO long-polling through each strategy, with node-local and with Redis-shared
    /// Engine.IO sessions: handshake success and `Session ID unknown` errors.
    Polling {
        #[command(flatten)]
        common: Common,
        /// Sessions each client opens one after the other.
        #[arg(long, default_value_t = 3, value_parser = at_least_one)]
        sessions: usize,
        /// Poll/pong cycles per session.
        #[arg(long, default_value_t = 6)]
        cycles: usize,
    },
    /// Socket.IO chat clients in rooms across three chat nodes + Redis, each sending at a
    /// rate: delivered messages/s and delivery latency; then the same against the reference
    /// Node.js socket.io cluster (bench/node/).
    Chat {
        #[command(flatten)]
        common: Common,
        /// Rooms; clients (`--connections`) are spread over them.
        #[arg(long, default_value_t = 5, value_parser = at_least_one)]
        rooms: usize,
        /// Messages per second each client sends (with --cpu-limit: the first step).
        #[arg(long, default_value_t = 2.0, value_parser = positive)]
        rate: f64,
        /// Give each cluster's nodes together this many CPUs (a cgroup CPU quota, e.g. 0.5)
        /// and raise the rate in steps of √2 until a step misses --max-p99 or loses
        /// messages: the clusters compare by the load each sustains at equal CPU. Needs a
        /// writable cgroup cpu controller (root).
        #[arg(long, value_parser = positive)]
        cpu_limit: Option<f64>,
        /// With --cpu-limit: the shared redis-server joins the budget of the cluster that
        /// is running (chat-node keeps history, rate limits and recovery streams in Redis;
        /// the reference only publishes there).
        #[arg(long, requires = "cpu_limit")]
        limit_redis: bool,
        /// With --cpu-limit: the p99 delivery latency a sustained step stays within.
        #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
        max_p99: Duration,
        /// With --cpu-limit: the most steps of the ladder (12 reach 45× the first rate).
        #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..=40))]
        steps: u32,
        /// With --cpu-limit: steps that bisect between the last sustained and the first
        /// failed rate (each halves the gap in ratio: 2 narrow √2 to 9%).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=10))]
        refine: u32,
    },
    /// Runs one of bench's backends (HTTP + WebSocket echo answering with its id).
    Backend(BackendArgs),
    /// Draws a report's charts and report.md again from its results.json (after a change
    /// to the charts or the Markdown), without measuring anything.
    Redraw {
        /// The report folder (holding results.json).
        folder: PathBuf,
    },
    /// Compares two reports of one scenario (a before and an after): each target's medians
    /// metric by metric, their ratio, the range of each one's runs, and whether the change
    /// goes beyond them. Measures nothing.
    Compare {
        /// The first report folder (the "before").
        first: PathBuf,
        /// The second report folder (the "after").
        second: PathBuf,
        /// Print a Markdown table instead of aligned text.
        #[arg(long)]
        markdown: bool,
    },
}

/// Options every scenario takes.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Length of each measurement (http, ws-echo, hetero, failover's phases, chat); ws-hold,
    /// recover, sticky and polling run until their steps are done and do not use it.
    #[arg(long, default_value = "10s", value_parser = measurement)]
    pub duration: Duration,
    /// Concurrent client connections (http, ws-echo, hetero, failover) or clients (sticky,
    /// polling, chat); ws-hold and recover set their own counts (--steps, --batch).
    #[arg(long, default_value_t = 50, value_parser = at_least_one)]
    pub connections: usize,
    /// Targets, comma separated: `direct`, `switchyard:<strategy>`, `nginx:<strategy>`,
    /// `haproxy:<strategy>`, with a strategy among round_robin, least_conn, ip_hash,
    /// sticky_cookie, p2c, least_time; a proxy without a strategy uses the scenario's
    /// default, and `<proxy>:all` expands to every strategy (those a proxy lacks are
    /// reported n/a). Default: the scenario's own list.
    #[arg(long, value_delimiter = ',')]
    pub targets: Vec<String>,
    /// Worker threads/processes of every proxy.
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    pub workers: usize,
    /// Report folder; default `bench/results/<date>-<time>-<scenario>/` (e.g.
    /// `2026-11-30-231313-http`) in the source tree bench was built from.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Repetitions; numbers are the medians over the runs.
    #[arg(long, default_value_t = 3, value_parser = at_least_one)]
    pub runs: usize,
    /// Backends behind every proxy; default 3 (sticky: 4; polling and chat: 3 nodes).
    #[arg(long, value_parser = at_least_one)]
    pub backends: Option<usize>,
    /// Don't pin the proxy to a CPU with taskset.
    #[arg(long)]
    pub no_pin: bool,
    /// Keep bench's own processes (load generator, backends, chat nodes) off the proxy's
    /// CPU, so that the proxy under test has it to itself; they share the other CPUs.
    #[arg(long, conflicts_with = "no_pin")]
    pub isolate: bool,
    /// The Switchyard `proxy` binary; default: next to this executable.
    #[arg(long)]
    pub proxy_bin: Option<PathBuf>,
    /// The `chat-node` binary (polling, chat); default: next to this executable.
    #[arg(long)]
    pub chat_node_bin: Option<PathBuf>,
    /// The Node.js reference cluster's folder (chat): server.mjs with its node_modules
    /// (`npm ci --prefix <dir>`); default: bench/node of the source tree bench was built
    /// from.
    #[arg(long, env = "BENCH_NODE_DIR")]
    pub node_dir: Option<PathBuf>,
    /// Install nginx/haproxy with apt-get when missing (otherwise they are skipped).
    #[arg(long)]
    pub install: bool,
    /// No progress bar (logs only).
    #[arg(long)]
    pub quiet: bool,
}

/// `bench backend`.
#[derive(Debug, Clone, Args)]
pub struct BackendArgs {
    /// Address to listen on; port 0 picks one, printed as `LISTENING <addr>`.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
    /// Id sent in every answer.
    #[arg(long)]
    pub id: String,
    /// Delay before every HTTP answer.
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    pub delay: Duration,
}

/// Common flags a scenario does not use, given on its command line: they were ignored
/// without a word (`bench recover --duration 2s` ran as long as ever). `given(id)` says
/// whether the flag with that clap id was on the command line.
pub fn unused_flags(scenario: &str, given: impl Fn(&str) -> bool) -> Vec<String> {
    let unused: &[(&str, &str, &str)] = match scenario {
        "ws-hold" => &[
            (
                "duration",
                "--duration",
                "it runs until its --steps are open",
            ),
            (
                "connections",
                "--connections",
                "--steps sets how many are opened",
            ),
        ],
        "recover" => &[
            (
                "duration",
                "--duration",
                "it runs until its two batches are open",
            ),
            (
                "connections",
                "--connections",
                "--batch sets how many are opened",
            ),
        ],
        "sticky" => &[(
            "duration",
            "--duration",
            "each client sends --requests requests",
        )],
        "polling" => &[(
            "duration",
            "--duration",
            "each client runs --sessions and --cycles",
        )],
        _ => &[],
    };
    // The chat nodes' flags are listed in every scenario's --help (the options are
    // shared): `bench http --chat-node-bin x` looked as if it did something.
    // Named scenarios only: clap panics on asking about an id that the subcommand
    // (backend, redraw, compare) lacks.
    let chat_node_bin: &[(&str, &str, &str)] = match scenario {
        "http" | "ws-echo" | "ws-hold" | "hetero" | "recover" | "failover" | "sticky" => &[(
            "chat_node_bin",
            "--chat-node-bin",
            "only polling and chat start chat nodes",
        )],
        _ => &[],
    };
    let node_dir: &[(&str, &str, &str)] = match scenario {
        "http" | "ws-echo" | "ws-hold" | "hetero" | "recover" | "failover" | "sticky"
        | "polling" => &[(
            "node_dir",
            "--node-dir",
            "only chat runs the Node.js reference cluster",
        )],
        _ => &[],
    };
    unused
        .iter()
        .chain(chat_node_bin)
        .chain(node_dir)
        .filter(|(id, _, _)| given(id))
        .map(|(_, flag, why)| format!("{scenario} does not use {flag} ({why}); ignored"))
        .collect()
}

// Zero connections, runs, workers or rates used to be raised to 1 (or, for a rate, to run a
// closed loop) without a word; they are refused instead, with the flag named by clap.

/// A count of at least one.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A measurement's length: zero would judge the goals on no samples at all (`met`, with
/// every latency 0).
fn measurement(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d < Duration::from_millis(100) => Err("must be at least 100ms".to_owned()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// A rate of at least 1/s (clap's own range check said `0 is not in
/// 1..18446744073709551615`).
fn rate(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("must be at least 1 (per second)".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A finite number above zero (a message rate, a CPU budget).
fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        Ok(_) => Err("must be a number above 0".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parses(args: &str) -> bool {
        Cli::try_parse_from(args.split_whitespace()).is_ok()
    }

    #[test]
    fn flags_a_scenario_ignores_are_named() {
        let w = unused_flags("recover", |id| id == "duration");
        assert_eq!(w.len(), 1);
        assert!(w[0].starts_with("recover does not use --duration"), "{w:?}");
        let chat_flags = |id: &str| id == "chat_node_bin" || id == "node_dir";
        assert_eq!(unused_flags("ws-hold", |id| !chat_flags(id)).len(), 2);
        assert!(unused_flags("http", |id| !chat_flags(id)).is_empty());
        assert!(unused_flags("sticky", |_| false).is_empty());
        assert_eq!(unused_flags("http", chat_flags).len(), 2);
        let polling = unused_flags("polling", chat_flags);
        assert!(
            polling.len() == 1 && polling[0].contains("--node-dir"),
            "{polling:?}"
        );
        assert!(unused_flags("chat", chat_flags).is_empty());
    }

    /// main asks clap about each id `unused_flags` names; an id the subcommand lacks is a
    /// panic (`bench backend` and `bench redraw` died of one).
    #[test]
    fn every_id_asked_about_exists_in_its_subcommand() {
        use clap::CommandFactory as _;
        let cli = Cli::command();
        for sub in cli.get_subcommands() {
            let name = sub.get_name();
            let ids: Vec<&str> = sub.get_arguments().map(|a| a.get_id().as_str()).collect();
            let asked = std::cell::RefCell::new(Vec::new());
            let _ = unused_flags(name, |id| {
                asked.borrow_mut().push(id.to_owned());
                false
            });
            for id in asked.into_inner() {
                assert!(ids.contains(&id.as_str()), "{name} has no {id}");
            }
        }
    }

    #[test]
    fn zero_and_negative_sizes_are_refused() {
        assert!(parses(
            "bench http --rates 100,200 --connections 1 --runs 1 --workers 1"
        ));
        for bad in [
            "bench http --rates 0",
            "bench http --rates 100,0",
            "bench http --connections 0",
            "bench http --runs 0",
            "bench http --workers 0",
            "bench http --backends 0",
            "bench hetero --rate 0",
            "bench ws-echo --rates 0",
            "bench failover --rate 0",
            "bench recover --batch 0",
            "bench sticky --requests 0",
            "bench polling --sessions 0",
            "bench chat --rooms 0",
            "bench chat --rate 0",
            "bench chat --rate -1",
            "bench chat --rate nan",
            "bench chat --cpu-limit 0",
            "bench http --duration 0s",
            "bench ws-echo --duration 50ms",
            "bench ws-hold --steps 0",
            "bench ws-hold --steps 0,100",
        ] {
            assert!(!parses(bad), "{bad} was accepted");
        }
    }
}
