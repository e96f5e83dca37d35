//! `switchyard up`: checks the addresses, makes the dev certificate, picks Redis, starts the
//! chat nodes and the proxy, waits until the proxy serves them over TLS, prints where to go,
//! then supervises until SIGINT/SIGTERM (or until a component dies) and stops everything in
//! order: the proxy first (no new clients), then the nodes (they close their sessions), then
//! a private Redis.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::certs;
use crate::children::{self, Exit, Supervised};
use crate::cli::UpArgs;
use crate::console;
use crate::nodes::{self, Embedded};
use crate::ports;
use crate::proxy_config::StackProxy;
use crate::ready;
use crate::redis::{self, Choice};
use crate::signals::StopSignals;

/// A node's own grace after SIGTERM (its `--shutdown-grace`): short, since the proxy is
/// already gone when the nodes are stopped.
const NODE_GRACE: Duration = Duration::from_secs(2);

/// What is running, stopped in reverse order of need.
#[derive(Debug, Default)]
struct Running {
    redis: Option<Supervised>,
    nodes: Vec<Supervised>,
    embedded: Option<Embedded>,
    proxy: Option<Supervised>,
}

impl Running {
    async fn stop(self, grace: Duration) {
        if let Some(proxy) = self.proxy {
            proxy.stop(grace).await;
        }
        let mut stopping = tokio::task::JoinSet::new();
        for node in self.nodes {
            stopping.spawn(node.stop(grace));
        }
        while stopping.join_next().await.is_some() {}
        if let Some(embedded) = self.embedded {
            embedded.stop(grace).await;
        }
        if let Some(redis) = self.redis {
            redis.stop(grace).await;
        }
    }
}

/// Why the stack stopped.
enum Ended {
    Signal(&'static str),
    Failed(anyhow::Error),
}

/// Runs the stack until a stop signal. Returns an error when it could not start or a
/// component died; everything started is stopped either way.
pub async fn up(args: UpArgs) -> Result<()> {
    let exe = std::env::current_exe().context("locating the switchyard executable")?;
    let nodes = node_list(&args)?;
    check_addresses(&args, &nodes)?;

    let certs = certs::ensure(&args.certs)?;
    if certs.created {
        console::say(&format!(
            "created the development CA and localhost certificate in {}",
            args.certs.display()
        ));
        console::raw(&certs::trust_help(&certs.ca, args.https.port()));
    } else {
        console::say(&format!(
            "using the development CA {} (trust it once; see README, \"Trusting the development CA\")",
            certs.ca.display()
        ));
    }

    let work = tempfile::Builder::new()
        .prefix("switchyard-")
        .tempdir()
        .context("creating a temporary directory")?;
    let (token, token_from_env) = match std::env::var("SWITCHYARD_ADMIN_TOKEN") {
        Ok(t) if !t.trim().is_empty() => (t, true),
        _ => (random_hex(16), false),
    };
    let plan = Plan {
        args: &args,
        exe: &exe,
        work: work.path(),
        proxy_config: write_proxy_config(&args, &certs, &nodes, &token, work.path())?,
        nodes: &nodes,
        ca: &certs.ca,
    };

    let mut signals = StopSignals::install()?;
    let (exits_tx, mut exits) = mpsc::unbounded_channel();
    let mut running = Running::default();
    let start = start(&plan, &mut running, exits_tx);
    let started = tokio::select! {
        started = start => started.map_err(Ended::Failed),
        signal = signals.recv() => Err(Ended::Signal(signal)),
        exit = exits.recv() => Err(Ended::Failed(died(exit))),
    };
    let ended = match started {
        Ok(redis) => {
            banner(
                &args,
                &redis,
                running.redis.is_some(),
                &token,
                token_from_env,
            );
            tokio::select! {
                signal = signals.recv() => Ended::Signal(signal),
                exit = exits.recv() => Ended::Failed(died(exit)),
            }
        }
        Err(ended) => ended,
    };
    match &ended {
        Ended::Signal(signal) => console::say(&format!("{signal}: stopping everything")),
        Ended::Failed(_) => console::say("stopping everything"),
    }
    running.stop(args.stop_grace).await;
    drop(work);
    match ended {
        Ended::Signal(_) => {
            console::say("all stopped");
            Ok(())
        }
        Ended::Failed(error) => Err(error),
    }
}

fn died(exit: Option<Exit>) -> anyhow::Error {
    match exit {
        Some(exit) => anyhow!("{} stopped unexpectedly (see its log above)", exit.name),
        None => anyhow!("lost track of the components"),
    }
}

/// `(id, addr)` of each node.
fn node_list(args: &UpArgs) -> Result<Vec<(String, SocketAddr)>> {
    (1..=args.nodes)
        .map(|i| {
            let addr = args.node_addr(i).ok_or_else(|| {
                anyhow!(
                    "--node-base-port {} leaves no room for {} nodes",
                    args.node_base_port,
                    args.nodes
                )
            })?;
            Ok((UpArgs::node_id(i), addr))
        })
        .collect()
}

/// Refuses at once when an address is taken, naming the flag that changes it.
fn check_addresses(args: &UpArgs, nodes: &[(String, SocketAddr)]) -> Result<()> {
    let mut wanted = vec![
        (
            args.https,
            "the proxy's HTTPS listener".to_owned(),
            "--https",
        ),
        (args.http, "the proxy's HTTP listener".to_owned(), "--http"),
        (args.admin, "the proxy's admin API".to_owned(), "--admin"),
    ];
    for (id, addr) in nodes {
        wanted.push((*addr, format!("chat node {id}"), "--node-base-port"));
    }
    // Two of our own on one port: each is free until the first takes it, and the second
    // would fail after everything before it had started.
    for (i, (addr, what, flag)) in wanted.iter().enumerate() {
        if let Some((_, other, other_flag)) =
            wanted[..i].iter().find(|(a, ..)| ports::overlap(*a, *addr))
        {
            bail!(
                "{what} ({flag}) and {other} ({other_flag}) are both given {addr}: change one of them"
            );
        }
    }
    for (addr, what, flag) in &wanted {
        ports::ensure_free(*addr, what, flag)?;
    }
    Ok(())
}

/// What [`start`] starts.
struct Plan<'a> {
    args: &'a UpArgs,
    /// This executable, started in its `node` and `proxy` roles.
    exe: &'a Path,
    /// A private temporary directory (the proxy config, a private Redis's files).
    work: &'a Path,
    proxy_config: PathBuf,
    nodes: &'a [(String, SocketAddr)],
    ca: &'a Path,
}

/// Writes the proxy's configuration into `work` and checks it with the proxy's own loader.
fn write_proxy_config(
    args: &UpArgs,
    certs: &certs::DevCerts,
    nodes: &[(String, SocketAddr)],
    token: &str,
    work: &Path,
) -> Result<PathBuf> {
    let toml = StackProxy {
        https: args.https,
        http: args.http,
        admin: args.admin,
        cert: &certs.cert,
        key: &certs.key,
        strategy: args.strategy,
        nodes,
        admin_token: token,
        sticky_key: &random_hex(32),
    }
    .toml();
    let path = work.join("proxy.toml");
    std::fs::write(&path, toml).with_context(|| format!("writing {}", path.display()))?;
    if let Err(errors) = proxy::config::Config::load(&path) {
        bail!("the generated proxy configuration is invalid:\n{errors}");
    }
    Ok(path)
}

/// Starts Redis (if any), the nodes and the proxy, and waits until the proxy serves them.
/// Returns the Redis description for the banner.
async fn start(
    plan: &Plan<'_>,
    running: &mut Running,
    exits: mpsc::UnboundedSender<Exit>,
) -> Result<String> {
    let Plan {
        args,
        exe,
        work,
        nodes,
        ..
    } = *plan;
    let (url, redis) = match redis::choose(args.redis.as_deref(), args.no_redis) {
        Choice::Given(url) => (
            Some(url.clone()),
            format!("{} (given)", redis::redacted(&url)),
        ),
        Choice::Private(bin) => {
            let (child, url) =
                redis::start_private(&bin, &work.join("redis"), args.ready_timeout, exits.clone())
                    .await?;
            running.redis = Some(child);
            let what = format!("{url} (a private redis-server for this run; nothing is kept)");
            (Some(url), what)
        }
        Choice::Embedded(why) => (
            None,
            format!(
                "none ({why}): the nodes run inside this process on the embedded default, \
                 sharing state in memory; install redis-server or pass --redis URL to run \
                 them as separate processes"
            ),
        ),
    };
    console::say(&format!("Redis: {redis}"));

    match &url {
        Some(url) => {
            let mut listening = Vec::new();
            for (id, addr) in nodes {
                let mut cmd = Command::new(exe);
                cmd.arg("node")
                    .args(nodes::node_flags(id, *addr, NODE_GRACE))
                    .env(nodes::REDIS_URL_ENV, url)
                    // One address for every node: the second could not bind it and the
                    // stack would not start. `up` serves no node metrics (see README).
                    .env_remove(nodes::METRICS_LISTEN_ENV);
                let spawned = children::spawn(id, cmd, exits.clone())?;
                running.nodes.push(spawned.child);
                listening.push((id, spawned.listening));
            }
            for (id, rx) in listening {
                match tokio::time::timeout(args.ready_timeout, rx).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => {
                        bail!("chat node {id} stopped before it was ready (see its log above)")
                    }
                    Err(_) => bail!(
                        "chat node {id} was not ready within {:?}",
                        args.ready_timeout
                    ),
                }
            }
        }
        None => {
            running.embedded = Some(Embedded::start(nodes, NODE_GRACE, exits.clone()).await?);
        }
    }

    let mut cmd = Command::new(exe);
    cmd.arg("proxy").arg("--config").arg(&plan.proxy_config);
    running.proxy = Some(children::spawn("proxy", cmd, exits)?.child);
    ready::wait_for_proxy(
        args.https,
        args.admin,
        plan.ca,
        nodes.len(),
        args.ready_timeout,
    )
    .await?;
    Ok(redis)
}

fn banner(args: &UpArgs, redis: &str, private_redis: bool, token: &str, token_from_env: bool) {
    let url = format!("https://localhost:{}/", args.https.port());
    let admin = ports::connectable(args.admin);
    let token_line = if token_from_env {
        "token: from $SWITCHYARD_ADMIN_TOKEN".to_owned()
    } else {
        format!("token: {token}")
    };
    console::raw(&format!(
        "\n\
         \x20 Switchyard is up: {nodes} chat nodes behind the proxy ({strategy}).\n\
         \x20 Redis:  {redis}\n\
         \x20 Open:   {url}   (http://{http}/ redirects there)\n\
         \x20 Admin:  http://{admin}/status   {token_line}\n\
         \x20         e.g. curl -X POST -H 'Authorization: Bearer <token>' http://{admin}/backends/chat/n1/drain\n\
         \x20 Stop:   Ctrl-C (the proxy, then the nodes{then_redis})\n",
        // Only a Redis of this run's own is stopped with it.
        then_redis = if private_redis { ", then Redis" } else { "" },
        nodes = args.nodes,
        strategy = args.strategy.as_str(),
        http = ports::connectable(args.http),
    ));
    console::say(&format!("ready: {url}"));
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}
