//! The `proxy` binary: run from a config file or from flags, check a config, or generate
//! development certificates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use proxy::balance::StrategyKind;
use proxy::config::{ClientAuthMode, Config, DnsFamily, QuickOptions};

/// mimalloc returns freed memory to the OS far better than glibc malloc after bursts of
/// handshakes, which keeps RSS per idle WebSocket low (see the memory figures in README).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "proxy",
    version,
    about = "Switchyard edge proxy and load balancer"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Run from this TOML config file.
    #[arg(long, short, conflicts_with_all = ["listen", "backends", "tls_listen", "client_ca"])]
    config: Option<PathBuf>,

    /// Quick mode: plain HTTP listen address.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Quick mode: a backend `ip:port`, `[v6]:port` or `host:port` (one backend per address
    /// of the name), with `=weight` optionally (repeat for more).
    #[arg(long = "backend", value_name = "ADDR[=WEIGHT]")]
    backends: Vec<String>,
    /// Quick mode: a backup backend, used only while every primary is down.
    #[arg(long = "backup", value_name = "ADDR")]
    backups: Vec<String>,
    /// Quick mode: balancing strategy.
    #[arg(long, value_enum, default_value_t = StrategyKind::LeastConn)]
    strategy: StrategyKind,
    /// Quick mode: TLS listen address (needs --cert and --key).
    #[arg(long)]
    tls_listen: Option<SocketAddr>,
    /// Quick mode: certificate chain (PEM, leaf first) for --tls-listen.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Quick mode: the certificate's private key (PEM).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Quick mode: clients of --tls-listen present a certificate issued by one of these CA
    /// certificates (PEM), named to the backends in `x-forwarded-client-cert` (mutual TLS).
    #[arg(long, value_name = "FILE")]
    client_ca: Option<PathBuf>,
    /// Quick mode: with --client-ca, whether a client without a certificate is refused
    /// (required, the default) or let through unnamed (optional).
    #[arg(long, value_enum, value_name = "MODE")]
    client_auth: Option<ClientAuthMode>,
    /// Quick mode: with --client-ca, revoked client certificates (PEM CRLs).
    #[arg(long, value_name = "FILE")]
    client_crl: Option<PathBuf>,
    /// Quick mode: enable active HTTP health checks on this path.
    #[arg(long)]
    health_path: Option<String>,
    /// Quick mode: while every backend is down by health checks, send requests to all of
    /// them rather than answer 503 (`fail_open`).
    #[arg(long)]
    fail_open: bool,
    /// Quick mode: admin listener (metrics, status, mutations).
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Bearer token for admin mutations.
    #[arg(long, env = "SWITCHYARD_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Worker threads, 1 to 1024 (default: number of cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Quick mode: the backends speak TLS (certificates checked against the system's roots
    /// for each backend's host name, or IP address, unless --backend-ca / --backend-server-name say
    /// otherwise; either implies this).
    #[arg(long)]
    backend_tls: bool,
    /// Quick mode: trust these CA certificates (PEM) for the backends.
    #[arg(long, value_name = "FILE")]
    backend_ca: Option<PathBuf>,
    /// Quick mode: the name the backends' certificates must carry, also sent as SNI.
    #[arg(long, value_name = "NAME")]
    backend_server_name: Option<String>,
    /// Quick mode: speak h2 to the backends (h2c, prior knowledge, without --backend-tls;
    /// ALPN h2 with it), for gRPC and other HTTP/2-only backends.
    #[arg(long)]
    backend_h2: bool,
    /// Quick mode: the listeners sit behind a TCP load balancer that sends a PROXY
    /// protocol header (v1 or v2) first on every connection, with the client's address.
    #[arg(long)]
    proxy_protocol: bool,
    /// Quick mode: at most N in-flight requests plus open tunnels on each backend (nginx's
    /// `max_conns`); a full backend is passed over, and with all full the client gets 503.
    #[arg(long, value_name = "N", default_value_t = 0)]
    max_conns: u32,
    /// Quick mode: which addresses of a backend named `host:port` become backends (all:
    /// IPv4 and IPv6; ipv4 for a `localhost` whose `::1` nothing listens on).
    #[arg(long, value_enum, default_value_t = DnsFamily::All)]
    dns_family: DnsFamily,
    /// HMAC key for sticky cookies (shared by all replicas).
    #[arg(long, env = "SWITCHYARD_STICKY_KEY", hide_env_values = true)]
    sticky_key: Option<String>,
    /// Take the listening sockets over from a running proxy with the same listeners: start
    /// this one, then send the old one SIGQUIT. It hands its sockets over, stops accepting
    /// and finishes what it has within the grace period, so an upgrade refuses no connection.
    #[arg(long)]
    upgrade: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate a config file, print a summary; exit 1 with file:line errors.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Generate a development CA and a localhost certificate.
    GenCert {
        #[arg(long, default_value = "certs")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // stdout belongs to the access log (`path = "-"`), as nginx's images send access.log
    // to stdout and error.log to stderr: one stream of log lines mixed into the other breaks
    // every shipper that parses it as JSON or combined lines.
    proxy::logging::init(proxy::logging::Output::Stderr);
    // Before the config is read: the default connection cap is derived from the result.
    proxy::capacity::raise_open_files();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Some(Command::GenCert { out }) => {
            let dir = out.display();
            if proxy::tls::gen_cert(&out)? {
                println!(
                    "wrote {dir}/ca.pem, {dir}/ca-key.pem, {dir}/localhost.pem, \
                     {dir}/localhost-key.pem"
                );
                println!("trust the CA: see README.md, section \"Trusting the development CA\"");
            } else {
                // A CA that is trusted already stays trusted: nothing to do again.
                println!(
                    "kept the CA {dir}/ca.pem (and its key); wrote {dir}/localhost.pem, \
                     {dir}/localhost-key.pem signed by it"
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        Some(Command::Check { config }) => {
            return Ok(match Config::load(&config) {
                Ok(c) => {
                    println!("{}", c.summary());
                    println!("{}: OK", config.display());
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    eprintln!("{errors}");
                    ExitCode::FAILURE
                }
            });
        }
        None => {}
    }
    let config = match &cli.config {
        Some(path) => Config::load(path),
        None => Config::from_quick(&QuickOptions {
            listen: cli.listen,
            backends: cli.backends,
            backups: cli.backups,
            strategy: cli.strategy,
            tls_listen: cli.tls_listen,
            cert: cli.cert,
            key: cli.key,
            client_ca: cli.client_ca,
            client_auth: cli.client_auth,
            client_crl: cli.client_crl,
            health_path: cli.health_path,
            fail_open: cli.fail_open,
            admin: cli.admin,
            admin_token: cli.admin_token,
            threads: cli.threads,
            sticky_key: cli.sticky_key,
            backend_tls: cli.backend_tls,
            backend_ca: cli.backend_ca,
            backend_server_name: cli.backend_server_name,
            backend_h2: cli.backend_h2,
            proxy_protocol: cli.proxy_protocol,
            max_conns: cli.max_conns,
            dns_family: cli.dns_family,
        }),
    };
    let config = match config {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
    };
    proxy::server::run(config, cli.upgrade)?;
    Ok(ExitCode::SUCCESS)
}
