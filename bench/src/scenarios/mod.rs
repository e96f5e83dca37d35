//! The scenario driver: starts backends and each target in turn (alternating targets within
//! each run, like a fair A/B), calls the scenario's measurement, takes medians over the runs
//! and writes the report.

mod chat;
mod failover;
mod hetero;
mod http;
mod polling;
mod recover;
mod sticky;
mod ws_echo;
mod ws_hold;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

use crate::backends::Backends;
use crate::cli::{Command, Common};
use crate::report::{meta, Check, Column, Partial, Report, RunResult, TargetReport};
use crate::stats::{median, Fairness, Percentiles};
use crate::targets::{
    availability, launch, parse_targets, LaunchOpts, Proxy, Running, Strategy, Target, Tools,
};

/// What a scenario needs from the driver.
pub struct Plan {
    pub name: &'static str,
    pub description: String,
    pub default_targets: &'static str,
    pub default_strategy: Strategy,
    /// One entry per backend: its answer delay.
    pub delays: Vec<Duration>,
    /// New backends for every measurement (when a scenario kills or fills them).
    pub fresh_backends: bool,
    pub allow_direct: bool,
    pub columns: Vec<Column>,
    pub notes: Vec<String>,
    /// Chat nodes instead of bench backends (Socket.IO scenarios).
    pub chat: Option<ChatPlan>,
}

/// Chat nodes behind the proxies, in variants.
pub struct ChatPlan {
    pub nodes: usize,
    pub variants: Vec<ChatVariant>,
    /// CPUs all nodes of one cluster share (a cgroup quota), if limited.
    pub cpu_limit: Option<f64>,
    /// The shared redis-server is in the budget too.
    pub limit_redis: bool,
}

/// One kind of chat cluster: a row suffix, the nodes' arguments (`{redis}` is replaced by
/// the URL of a redis-server bench starts), and whether the nodes are the Node.js reference.
#[derive(Debug, Clone)]
pub struct ChatVariant {
    pub label: String,
    pub args: Vec<String>,
    pub node_reference: bool,
}

/// Runs a scenario subcommand end to end.
pub async fn run(cmd: Command) -> anyhow::Result<()> {
    // Before anything is started: see crate::signals.
    let mut stop = crate::signals::Stop::install().context("installing the signal handlers")?;
    let (common, plan) = plan(&cmd)?;
    let tools = Tools::discover(common.proxy_bin.clone(), common.install)?;
    let listed: Vec<String> = if common.targets.is_empty() {
        plan.default_targets.split(',').map(str::to_owned).collect()
    } else {
        common.targets.clone()
    };
    let targets = parse_targets(&listed, plan.default_strategy)?;
    let out = common
        .out
        .clone()
        .unwrap_or_else(|| crate::report::default_out(plan.name));
    // nginx resolves a relative -c against its -p prefix: hand every tool absolute paths.
    let out = std::path::absolute(&out).context("resolving --out")?;
    let cpus = crate::affinity::allowed();
    let workers = common.workers.max(1);
    let pinning = Pinning::choose(&cpus, workers, common.no_pin, tools.taskset);
    if let Some(why) = &pinning.warning {
        eprintln!("bench: warning: {why}");
    }
    let pin = pinning.cpus.clone();
    if common.isolate {
        if !tools.taskset {
            anyhow::bail!("--isolate needs taskset (util-linux) to keep the proxy on its CPU");
        }
        if pin.is_empty() {
            anyhow::bail!(
                "--isolate needs {workers} CPU(s) for the proxy and another for bench; this \
                 process may use {}",
                cpus.len()
            );
        }
        let others: Vec<usize> = cpus.iter().copied().filter(|c| !pin.contains(c)).collect();
        crate::affinity::set_threads(std::process::id(), &others)
            .context("--isolate: moving bench off the proxy's CPUs")?;
    }
    let opts = LaunchOpts {
        workers,
        pin: pin.clone(),
        tools: tools.clone(),
        config_dir: out.join("configs"),
    };
    let mut reports: Vec<TargetReport> = Vec::new();
    let mut runnable = Vec::new();
    for t in &targets {
        let status = if t.proxy == Proxy::Direct && !plan.allow_direct {
            Err("n/a (no proxy to measure)".to_owned())
        } else {
            availability(*t, &tools).map_err(|e| e.to_string())
        };
        match status {
            Ok(()) => runnable.push(*t),
            Err(why) => {
                eprintln!("bench: {t}: {why}");
                reports.push(TargetReport::unavailable(t.to_string(), why));
            }
        }
    }
    // Nothing to measure: say so instead of writing a report with an empty table (and
    // exiting 0).
    if runnable.is_empty() {
        let why: Vec<String> = reports
            .iter()
            .map(|r| format!("{}: {}", r.target, r.status))
            .collect();
        anyhow::bail!(
            "no target of this {} run can be measured ({})",
            plan.name,
            why.join("; ")
        );
    }
    // Checked before the report folder is made: a wrong path used to leave an empty one.
    let chat_bin = match &plan.chat {
        Some(_) => Some(
            crate::targets::sibling_bin(
                common.chat_node_bin.clone(),
                "chat-node",
                "--chat-node-bin",
            )?
            .context("chat-node binary not found: cargo build -p chat-node, or --chat-node-bin")?,
        ),
        None => None,
    };
    let node_dir = match &plan.chat {
        Some(c) if c.variants.iter().any(|v| v.node_reference) => {
            Some(Backends::node_reference_dir(common.node_dir.as_deref())?)
        }
        _ => None,
    };
    // Before anything is measured: a report that cannot be written was found out only at
    // the end, after the whole run.
    let _out = prepare_out(&out)?;
    // Limited chat nodes run on the first CPU, away from the proxy on the last one.
    let node_cpu = pin.first().and(cpus.first()).copied();
    if let Some(cpus) = plan.chat.as_ref().and_then(|c| c.cpu_limit) {
        // Fail before starting anything when the budget cannot be set.
        crate::cpulimit::CpuLimit::create(cpus, node_cpu)?;
    }
    let runs = common.runs.max(1);
    let redis = match &plan.chat {
        Some(c)
            if c.variants
                .iter()
                .any(|v| v.args.iter().any(|a| a == "{redis}")) =>
        {
            Some(crate::redis::Redis::start()?)
        }
        _ => None,
    };
    let variants: Vec<ChatVariant> = match &plan.chat {
        Some(c) => c.variants.clone(),
        None => vec![ChatVariant {
            label: String::new(),
            args: Vec::new(),
            node_reference: false,
        }],
    };
    let row = |t: &Target, label: &str| {
        if label.is_empty() {
            t.to_string()
        } else {
            format!("{t} {label}")
        }
    };
    let collect_meta = || {
        let mut m = meta::collect(&tools, &pin, opts.workers);
        if let (Some(bin), Some(versions)) = (&chat_bin, m.get_mut("versions")) {
            if let (Some(all), serde_json::Value::Object(chat)) = (
                versions.as_object_mut(),
                crate::targets::chat_versions(bin, node_dir.as_deref()),
            ) {
                all.extend(chat);
            }
        }
        m
    };
    let pb = crate::progress::bar(
        (runnable.len() * runs * variants.len()) as u64,
        common.quiet,
    );
    let mut shared = if plan.fresh_backends || plan.chat.is_some() {
        None
    } else {
        Some(Backends::start(&plan.delays)?)
    };
    let ids = match (&shared, &plan.chat) {
        (Some(b), _) => b.ids(),
        (None, Some(c)) => (1..=c.nodes).map(|i| format!("n{i}")).collect(),
        (None, None) => (1..=plan.delays.len()).map(|i| format!("b{i}")).collect(),
    };
    let frame = Frame {
        cmd: &cmd,
        scenario: plan.name,
        description: plan.description,
        columns: plan.columns,
        notes: plan
            .notes
            .into_iter()
            .chain(pinning.note(workers, common.isolate))
            .collect(),
        backends: ids,
        unavailable: reports,
        rows: variants
            .iter()
            .flat_map(|v| runnable.iter().map(|t| row(t, &v.label)))
            .collect(),
        asked: targets.iter().map(ToString::to_string).collect(),
    };
    let mut results = Measured::new();
    let total = runnable.len() * runs * variants.len();
    let mut done = 0usize;
    let mut stopped: Option<&'static str> = None;
    // The machine and versions of the reports written while the run goes on: collected
    // once (it runs git and each proxy), the final report collects them again.
    let mut running_meta: Option<serde_json::Value> = None;
    'runs: for run in 0..runs {
        for v in &variants {
            for t in &runnable {
                // A signal during the last launch (synchronous) is seen here.
                if let Some(sig) = stop.arrived().await {
                    stopped = Some(sig);
                    break 'runs;
                }
                let name = row(t, &v.label);
                pb.set_message(format!("{name} (run {}/{runs})", run + 1));
                let mut fresh = None;
                let backends = match (shared.as_mut(), &chat_bin, &plan.chat) {
                    (Some(b), _, _) => b,
                    (None, Some(bin), Some(c)) => {
                        let url = redis.as_ref().map(|r| r.url.clone()).unwrap_or_default();
                        let args: Vec<String> = v
                            .args
                            .iter()
                            .map(|a| {
                                if a == "{redis}" {
                                    url.clone()
                                } else {
                                    a.clone()
                                }
                            })
                            .collect();
                        let mut started = match (&node_dir, v.node_reference) {
                            (Some(dir), true) => {
                                Backends::start_node_reference(dir, c.nodes, &args)?
                            }
                            (None, true) => anyhow::bail!("no Node.js reference folder"),
                            (_, false) => Backends::start_chat(bin, c.nodes, &args)?,
                        };
                        if let Some(cpus) = c.cpu_limit {
                            started.limit_cpu(cpus, node_cpu)?;
                        }
                        if let Some(r) = &redis {
                            started.count_redis(r.pid(), c.limit_redis)?;
                        }
                        fresh.insert(started)
                    }
                    _ => fresh.insert(Backends::start(&plan.delays)?),
                };
                let entry = results.entry(name).or_default();
                let pairs: Vec<(String, SocketAddr)> =
                    backends.ids().into_iter().zip(backends.addrs()).collect();
                match launch(*t, &pairs, &opts) {
                    Ok(running) => {
                        entry.1.clone_from(&running.command);
                        tokio::select! {
                            r = measure(&cmd, &common, &running, backends) => match r {
                                Ok(r) => entry.0.push(r),
                                Err(e) => entry.2.push(format!("run {}: {e:#}", run + 1)),
                            },
                            // The measurement in progress is dropped (its processes stop
                            // with `running` and `fresh`); what finished is reported.
                            sig = stop.recv() => {
                                stopped = Some(sig);
                                break 'runs;
                            }
                        }
                    }
                    Err(e) => entry.2.push(format!("run {}: {e:#}", run + 1)),
                }
                done += 1;
                pb.inc(1);
                // A bench killed from here on (SIGKILL, out of memory, the machine gone)
                // leaves this report: no handler runs then to write one.
                let started = std::time::Instant::now();
                let meta = running_meta.get_or_insert_with(collect_meta).clone();
                let partial = Partial {
                    done,
                    total,
                    interrupted_by: None,
                };
                let mut report = frame.report(&results, Some(partial), meta);
                match report.write(&out) {
                    Ok(()) => tracing::debug!(
                        "report of {done} of {total} measurements written in {:?}",
                        started.elapsed()
                    ),
                    // The run goes on: the disk may have room again by its end, and the
                    // previous report is still whole.
                    Err(e) => tracing::warn!(
                        "could not write the report of {done} of {total} measurements to {}: \
                         {e:#}",
                        out.display()
                    ),
                }
            }
        }
    }
    pb.finish_and_clear();
    if let Some(sig) = stopped {
        if done == 0 {
            // Nothing measured: the generated configs alone would make the folder refused
            // by the same command run again (the folder must be empty). They are this
            // run's: a folder with anything in it was refused before it began.
            let _ = std::fs::remove_dir_all(out.join("configs"));
            anyhow::bail!(
                "interrupted by {sig} before any measurement finished; no report written"
            );
        }
    }
    drop(shared);
    drop(redis);
    let partial = stopped.map(|sig| Partial {
        done,
        total,
        interrupted_by: Some(sig.to_owned()),
    });
    let mut report = frame.report(&results, partial, collect_meta());
    for t in &report.targets {
        if t.status.starts_with("failed") {
            eprintln!("bench: {}: {}", t.target, t.status);
        } else if t.ok() && !t.errors.is_empty() {
            eprintln!("bench: {}: {}", t.target, t.errors.join("; "));
        }
    }
    report
        .write(&out)
        .with_context(|| format!("writing the report to {}", out.display()))?;
    println!("{}", report.terminal_table());
    println!("report: {}", out.join("report.md").display());
    match stopped {
        Some(sig) => anyhow::bail!(
            "interrupted by {sig} after {done} of {total} measurements; partial report: {}",
            out.join("report.md").display()
        ),
        None => Ok(()),
    }
}

/// Where the proxy's workers run.
#[derive(Debug, PartialEq)]
struct Pinning {
    /// The CPUs the proxy is pinned to (taskset -c); empty: not pinned.
    cpus: Vec<usize>,
    /// Why it is not pinned, when it was meant to be.
    warning: Option<String>,
}

impl Pinning {
    /// The last `workers` of the CPUs this process may use, so that bench keeps at least
    /// one CPU of its own. All workers used to share the last CPU alone, whatever
    /// `--workers` said, and nothing said so.
    fn choose(allowed: &[usize], workers: usize, no_pin: bool, taskset: bool) -> Pinning {
        let none = |warning| Pinning {
            cpus: Vec::new(),
            warning,
        };
        if no_pin {
            return none(None);
        }
        if allowed.len() <= workers {
            // One CPU and one worker: nothing to pin to, as ever.
            return none((workers > 1 || allowed.len() > 1).then(|| {
                format!(
                    "--workers {workers} needs {workers} CPU(s) for the proxy and one more for \
                     bench, and this process may use {}: the proxy is not pinned (its workers \
                     share every CPU with bench and the backends)",
                    allowed.len()
                )
            }));
        }
        if !taskset {
            return none(Some(
                "taskset (util-linux) is not installed: the proxy is not pinned".to_owned(),
            ));
        }
        Pinning {
            cpus: allowed[allowed.len() - workers..].to_vec(),
            warning: None,
        }
    }

    /// What the report says about it.
    fn note(&self, workers: usize, isolate: bool) -> Option<String> {
        let workers = match workers {
            1 => "its one worker".to_owned(),
            n => format!("its {n} workers"),
        };
        if self.cpus.is_empty() {
            return Some(match &self.warning {
                Some(why) => format!("CPU pinning: {why}."),
                None => format!("CPU pinning: none; the proxy ({workers}) ran on any CPU."),
            });
        }
        let others = if isolate {
            "bench, its backends and chat nodes were kept on the other CPUs (--isolate)"
        } else {
            "bench and its backends could run on any CPU (--isolate keeps them off these)"
        };
        Some(format!(
            "CPU pinning: the proxy ({workers}) ran on CPU {} (taskset -c); {others}.",
            crate::report::list(&self.cpus)
        ))
    }
}

/// Each report row's runs, the command that ran it, and its failed runs.
type Measured = BTreeMap<String, (Vec<RunResult>, String, Vec<String>)>;

/// What a scenario's report holds besides the measurements, known before the first one.
struct Frame<'a> {
    cmd: &'a Command,
    scenario: &'static str,
    description: String,
    columns: Vec<Column>,
    notes: Vec<String>,
    backends: Vec<String>,
    /// The targets that cannot run here, with why.
    unavailable: Vec<TargetReport>,
    /// The report's rows in measuring order: each variant of each runnable target.
    rows: Vec<String>,
    /// The targets as asked for, whose order the report keeps.
    asked: Vec<String>,
}

impl Frame<'_> {
    /// The report of what has been measured. The report written after each measurement
    /// and the one written at the end (complete, or interrupted) are made here alike.
    fn report(
        &self,
        results: &Measured,
        partial: Option<Partial>,
        meta: serde_json::Value,
    ) -> Report {
        let mut reports = self.unavailable.clone();
        for name in &self.rows {
            let (runs, command, errors) = results.get(name).cloned().unwrap_or_default();
            if let (true, true, Some(p)) = (runs.is_empty(), errors.is_empty(), &partial) {
                let why = if p.interrupted_by.is_some() {
                    "interrupted (not measured)"
                } else {
                    "pending (not measured yet)"
                };
                reports.push(TargetReport::unavailable(name.clone(), why.to_owned()));
                continue;
            }
            reports.push(aggregate(name.clone(), runs, command, errors));
        }
        // Keep the order the user asked for, variants together.
        reports.sort_by_key(|r| {
            let base = r.target.split(' ').next().unwrap_or_default();
            self.asked
                .iter()
                .position(|t| t == base)
                .unwrap_or(usize::MAX)
        });
        let checks = checks(self.cmd, &mut reports);
        let checks = judged(partial.is_some(), &reports, checks);
        Report {
            partial,
            scenario: self.scenario.to_owned(),
            description: self.description.clone(),
            meta,
            columns: self.columns.clone(),
            backends: self.backends.clone(),
            targets: reports,
            checks,
            notes: self.notes.clone(),
            charts: Vec::new(),
        }
    }
}

/// Makes the report folder and checks that it can be written, before anything is measured.
/// A folder that already holds a report, or anything else, is refused: writing over it mixed
/// the old run's charts and generated configs (`configs/`) into the new report. The folder stays locked
/// while the returned guard lives.
fn prepare_out(out: &std::path::Path) -> anyhow::Result<OutFolder> {
    // The folders this makes: a run that fails before writing anything into them (a
    // redis-server that does not start, a cgroup that cannot be made) removes them again.
    let made: Vec<PathBuf> = out
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .map(Path::to_path_buf)
        .collect();
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create the report folder {}", out.display()))?;
    let mut out_folder = OutFolder { lock: None, made };
    // Two benches given the same --out both found it free and wrote over each other's
    // configs and reports (now rewritten after every measurement).
    out_folder.lock = Some(
        crate::report::lock_folder(out)
            .with_context(|| format!("cannot lock the report folder {}", out.display()))?
            .with_context(|| {
                format!(
                    "another bench is writing a report into {}: choose another --out",
                    out.display()
                )
            })?,
    );
    if out.join("results.json").exists() {
        anyhow::bail!(
            "{} already holds a report (results.json): choose another --out, or remove it first",
            out.display()
        );
    }
    // A bench killed (SIGKILL) before its first measurement leaves `configs/` and no
    // report; what
    // else is in a folder is not ours to mix into a report either. The probe of a bench
    // killed while writing it is ours, and is replaced below.
    let held: Vec<String> = std::fs::read_dir(out)
        .with_context(|| format!("cannot read the report folder {}", out.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name != PROBE)
        .collect();
    if !held.is_empty() {
        let mut shown = held;
        shown.sort();
        shown.truncate(3);
        anyhow::bail!(
            "{} is not empty (it holds {}; a bench killed before its first measurement \
             leaves configs/): choose another --out, or remove it first",
            out.display(),
            shown.join(", ")
        );
    }
    // As much as a report takes, synced: an empty file is made on a full disk too (it
    // needs no data block), and a file system that allocates late reports a full disk
    // only when the data is synced.
    let probe = out.join(PROBE);
    let written = std::fs::File::create(&probe).and_then(|mut f| {
        std::io::Write::write_all(&mut f, &[0u8; PROBE_BYTES])?;
        f.sync_all()
    });
    let _ = std::fs::remove_file(&probe);
    written.with_context(|| {
        format!(
            "cannot write into the report folder {} (a report takes some {} KiB)",
            out.display(),
            PROBE_BYTES / 1024
        )
    })?;
    Ok(out_folder)
}

/// A report folder locked for this bench; the folders `prepare_out` made are removed on
/// drop if they are still empty (nothing was written into them).
struct OutFolder {
    lock: Option<crate::report::FolderLock>,
    /// Innermost first.
    made: Vec<PathBuf>,
}

impl Drop for OutFolder {
    fn drop(&mut self) {
        // Unlocked first: the lock holds the folder open.
        self.lock = None;
        for dir in &self.made {
            // Fails, as it should, on a folder with anything in it.
            if std::fs::remove_dir(dir).is_err() {
                break;
            }
        }
    }
}

/// About the size of a report with its charts and configs.
const PROBE_BYTES: usize = 256 * 1024;

/// The file that checks a report folder can be written.
const PROBE: &str = ".bench-write-test";

fn aggregate(
    t: String,
    runs: Vec<RunResult>,
    command: String,
    errors: Vec<String>,
) -> TargetReport {
    if runs.is_empty() {
        let why = errors.first().cloned().unwrap_or_else(|| "no run".into());
        let mut r = TargetReport::unavailable(t.to_string(), format!("failed: {why}"));
        r.command = command;
        r.errors = errors;
        return r;
    }
    let mut metrics = BTreeMap::new();
    let keys: std::collections::BTreeSet<&String> =
        runs.iter().flat_map(|r| r.metrics.keys()).collect();
    for k in keys {
        let vals: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.metrics.get(k).copied())
            .collect();
        metrics.insert(k.clone(), median(&vals));
    }
    let nb = runs.iter().map(|r| r.per_backend.len()).max().unwrap_or(0);
    let per_backend: Vec<f64> = (0..nb)
        .map(|i| {
            median(
                &runs
                    .iter()
                    .map(|r| r.per_backend.get(i).copied().unwrap_or(0.0))
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    let lats: Vec<Percentiles> = runs.iter().filter_map(|r| r.latency).collect();
    let latency = (!lats.is_empty()).then(|| Percentiles::median_of(&lats));
    if !errors.is_empty() {
        // Some runs failed: the medians are over the others; say so in the JSON, and in
        // report.md (through `errors`: the failures were printed on stderr only).
        metrics.insert("failed_runs".into(), errors.len() as f64);
    }
    TargetReport {
        target: t.to_string(),
        status: "ok".to_owned(),
        errors,
        command,
        fairness: Fairness::of(&per_backend),
        metrics,
        per_backend,
        latency,
        runs,
    }
}

fn common_of(cmd: &Command) -> Option<&Common> {
    Some(match cmd {
        Command::Http { common, .. }
        | Command::WsEcho { common, .. }
        | Command::WsHold { common, .. }
        | Command::Hetero { common, .. }
        | Command::Recover { common, .. }
        | Command::Failover { common, .. }
        | Command::Sticky { common, .. }
        | Command::Polling { common, .. }
        | Command::Chat { common, .. } => common,
        Command::Backend(_) | Command::Redraw { .. } | Command::Compare { .. } => return None,
    })
}

fn plan(cmd: &Command) -> anyhow::Result<(Common, Plan)> {
    let common = common_of(cmd).context("not a scenario")?.clone();
    let n = |default: usize| common.backends.unwrap_or(default).max(1);
    let plan = match cmd {
        Command::Http { rates, .. } => http::plan(&common, rates, n(3)),
        Command::WsEcho { size, rates, .. } => ws_echo::plan(&common, *size, rates, n(3)),
        Command::WsHold { steps, .. } => {
            ws_hold::check_steps(steps)?;
            ws_hold::plan(steps, n(3), common.workers)
        }
        Command::Hetero { rate, slow, .. } => hetero::plan(&common, *rate, *slow, n(3)),
        Command::Recover { batch, wait, .. } => recover::plan(*batch, *wait, n(3)),
        Command::Failover {
            rate, websockets, ..
        } => failover::plan(&common, *rate, *websockets, n(3)),
        Command::Sticky { requests, .. } => sticky::plan(&common, *requests, n(4)),
        Command::Polling {
            sessions, cycles, ..
        } => polling::plan(&common, *sessions, *cycles, n(3)),
        Command::Chat {
            rooms,
            rate,
            cpu_limit,
            limit_redis,
            max_p99,
            ..
        } => {
            let budget = cpu_limit.map(|cpus| chat::Budget {
                cpus,
                with_redis: *limit_redis,
            });
            chat::plan(&common, *rooms, *rate, budget, *max_p99, n(3))
        }
        Command::Backend(_) | Command::Redraw { .. } | Command::Compare { .. } => {
            unreachable!("checked by common_of")
        }
    };
    Ok((common, plan))
}

async fn measure(
    cmd: &Command,
    common: &Common,
    running: &Running,
    backends: &mut Backends,
) -> anyhow::Result<RunResult> {
    match cmd {
        Command::Http { rates, .. } => http::measure(common, rates, running, backends).await,
        Command::WsEcho { size, rates, .. } => {
            ws_echo::measure(common, *size, rates, running, backends).await
        }
        Command::WsHold { steps, .. } => ws_hold::measure(steps, running, backends).await,
        Command::Hetero { rate, .. } => hetero::measure(common, *rate, running, backends).await,
        Command::Recover { batch, wait, .. } => {
            recover::measure(*batch, *wait, running, backends).await
        }
        Command::Failover {
            rate, websockets, ..
        } => failover::measure(common, *rate, *websockets, running, backends).await,
        Command::Sticky { requests, .. } => {
            sticky::measure(common, *requests, running, backends).await
        }
        Command::Polling {
            sessions, cycles, ..
        } => polling::measure(common, *sessions, *cycles, running, backends).await,
        Command::Chat {
            rooms,
            rate,
            max_p99,
            steps,
            refine,
            ..
        } => {
            let ladder = chat::Ladder {
                max_p99: *max_p99,
                steps: *steps,
                refine: *refine,
            };
            chat::measure(common, *rooms, *rate, ladder, running, backends).await
        }
        Command::Backend(_) | Command::Redraw { .. } | Command::Compare { .. } => {
            anyhow::bail!("not a scenario")
        }
    }
}

/// `bench redraw`: the report in `folder` drawn and judged again from its results.json.
pub fn redraw(folder: &std::path::Path) -> anyhow::Result<()> {
    // A mistyped folder said "cannot lock the report folder …: No such file or directory",
    // which reads like a locking problem.
    if !folder.join("results.json").is_file() {
        anyhow::bail!(
            "{} is not a bench report folder (no results.json in it)",
            folder.display()
        );
    }
    // A running bench rewrites the report after every measurement: a redraw meanwhile
    // could write the report it read over a newer one, the final one included.
    let _lock = crate::report::lock_folder(folder)
        .with_context(|| format!("cannot lock the report folder {}", folder.display()))?
        .with_context(|| {
            format!(
                "a bench is still writing the report in {}: redraw it once that run has ended",
                folder.display()
            )
        })?;
    let mut report = Report::read(folder)?;
    recheck(&mut report);
    report.write(folder)
}

/// Judges a stored report's goals again with this build's checks, from the command it
/// recorded (the runs are in results.json). A command that no longer parses keeps the
/// stored checks.
pub fn recheck(report: &mut Report) {
    let Some(line) = report.meta.get("command").and_then(|c| c.as_str()) else {
        return;
    };
    // The command is recorded shell-quoted (crate::child::shell_line): a path with a space
    // is one quoted word.
    let Some(words) = shlex::split(line) else {
        eprintln!("bench: keeping the stored checks: `{line}` is not shell words");
        return;
    };
    match <crate::cli::Cli as clap::Parser>::try_parse_from(words) {
        Ok(cli) => {
            let checks = checks(&cli.command, &mut report.targets);
            let checks = judged(report.partial.is_some(), &report.targets, checks);
            if !checks.is_empty() {
                report.checks = checks;
            }
        }
        Err(e) => eprintln!("bench: keeping the stored checks: `{line}` does not parse: {e}"),
    }
}

/// `checks` as a report states them. A partial report written mid-round has targets with
/// unequal runs (one has finished run 2, the next only run 1): their medians cover
/// different minutes of the machine, which the goals' comparisons must not (targets take
/// turns inside each run for that), so no goal is judged then; at a round's end they are,
/// over the rounds done.
fn judged(partial: bool, reports: &[TargetReport], mut checks: Vec<Check>) -> Vec<Check> {
    // Finished runs, failed ones included, of each target that has any (the others are
    // pending or cannot run, and no goal uses them).
    let done = reports
        .iter()
        .map(|t| t.runs.len() + t.errors.len())
        .filter(|&n| n > 0);
    let (lo, hi) = done.fold((usize::MAX, 0), |(lo, hi), n| (lo.min(n), hi.max(n)));
    if !partial || lo >= hi {
        return checks;
    }
    for c in checks.iter_mut().filter(|c| c.met.is_some()) {
        c.met = None;
        c.measured.push_str(&format!(
            "; not judged: a partial report, some targets have {hi} runs and others {lo}"
        ));
    }
    checks
}

fn checks(cmd: &Command, reports: &mut [TargetReport]) -> Vec<Check> {
    match cmd {
        Command::Http { .. } => http::checks(reports),
        Command::WsEcho { rates, .. } => {
            ws_echo::add_overhead(reports);
            ws_echo::checks(reports, rates)
        }
        Command::WsHold { .. } => ws_hold::checks(reports),
        Command::Hetero { .. } => hetero::checks(reports),
        Command::Chat { .. } => chat::checks(reports),
        _ => Vec::new(),
    }
}

/// The report of the first target that ran with this proxy (and strategy, when given).
pub(crate) fn find<'a>(
    reports: &'a [TargetReport],
    proxy: &str,
    strategy: Option<&str>,
) -> Option<&'a TargetReport> {
    reports.iter().filter(|r| r.ok()).find(|r| {
        let (p, s) = r.target.split_once(':').unwrap_or((r.target.as_str(), ""));
        p == proxy && strategy.is_none_or(|want| want == s)
    })
}

/// How a goal fared run by run. Targets alternate inside each run, so run *i* of every
/// target saw the same minutes of a shared machine: a goal that the medians meet in only
/// some runs (or miss while most runs meet it) is within the machine's noise, and the
/// check says so.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PerRun {
    /// The compared value of each run (a ratio, or a difference).
    values: Vec<f64>,
    /// Runs that met the goal.
    met: usize,
}

impl PerRun {
    /// Evaluates `f` on the same run of each of `targets`; `None` with fewer than two runs,
    /// or when a target lost a run, so that the runs no longer pair up.
    pub(crate) fn of(
        targets: &[&TargetReport],
        f: impl Fn(&[&RunResult]) -> Option<(f64, bool)>,
    ) -> Option<Self> {
        let n = targets.first()?.runs.len();
        let paired = targets
            .iter()
            .all(|t| t.runs.len() == n && t.metric("failed_runs").is_none());
        if n < 2 || !paired {
            return None;
        }
        let mut values = Vec::with_capacity(n);
        let mut met = 0;
        for i in 0..n {
            let runs: Vec<&RunResult> = targets.iter().map(|t| &t.runs[i]).collect();
            let (value, ok) = f(&runs)?;
            values.push(value);
            met += usize::from(ok);
        }
        Some(Self { values, met })
    }

    /// `; per run 0.89–1.30×, met in 2 of 5 runs`.
    pub(crate) fn ratios(this: Option<Self>) -> String {
        this.map_or(String::new(), |p| {
            let (lo, hi) = p.range();
            format!("; per run {lo:.2}–{hi:.2}×, {}", p.tally())
        })
    }

    /// `; <what> per run -0.012 to +0.090 ms, met in 2 of 5 runs`.
    pub(crate) fn ms_differences(this: Option<Self>, what: &str) -> String {
        this.map_or(String::new(), |p| {
            let (lo, hi) = p.range();
            format!("; {what} per run {lo:+.3} to {hi:+.3} ms, {}", p.tally())
        })
    }

    fn range(&self) -> (f64, f64) {
        let lo = self.values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = self
            .values
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        (lo, hi)
    }

    fn tally(&self) -> String {
        format!("met in {} of {} runs", self.met, self.values.len())
    }
}

/// `a`'s `key` over `b`'s in each paired run, met when `goal(ratio)`.
pub(crate) fn run_ratios(
    a: Option<&TargetReport>,
    b: Option<&TargetReport>,
    key: &str,
    goal: impl Fn(f64) -> bool,
) -> String {
    let per_run = a.zip(b).and_then(|(a, b)| {
        PerRun::of(&[a, b], |runs| {
            let ratio = runs[0].metric(key)? / runs[1].metric(key)?;
            ratio.is_finite().then(|| (ratio, goal(ratio)))
        })
    });
    PerRun::ratios(per_run)
}

/// A goal comparing two numbers; `met` is None when either side is missing.
pub(crate) fn compare(
    goal: &str,
    measured: Option<(f64, f64)>,
    describe: impl Fn(f64, f64) -> (String, bool),
) -> Check {
    match measured {
        Some((a, b)) => {
            let (text, met) = describe(a, b);
            Check {
                goal: goal.to_owned(),
                measured: text,
                met: Some(met),
            }
        }
        None => Check {
            goal: goal.to_owned(),
            // Both targets can run and still lack the figure (a per-CPU-second ratio
            // from too little CPU time): "did not run" alone sent users looking for a
            // failure that did not happen.
            measured: "a target it needs did not run, or a figure it needs is missing \
                       (`-` in the table)"
                .into(),
            met: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redrawing_a_folder_without_a_report_says_so() {
        let tmp = tempfile::tempdir().expect("temp dir");
        for folder in [tmp.path().to_path_buf(), tmp.path().join("missing")] {
            let e = redraw(&folder)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains("not a bench report folder"), "{e}");
        }
        assert!(!tmp.path().join("missing").exists());
    }

    fn target(name: &str, per_run: &[f64]) -> TargetReport {
        TargetReport::with_runs(name, "req_per_cpu_s", per_run)
    }

    /// A report written mid-round (a killed bench leaves it so) holds targets with unequal
    /// runs: switchyard's median over runs 1 and 2 against nginx's run 1 alone compares
    /// different minutes of the machine, so its goals are not judged; at a round's end
    /// they are, as in a complete report.
    #[test]
    fn a_partial_report_judges_goals_only_over_equal_runs() {
        let cli =
            <crate::cli::Cli as clap::Parser>::try_parse_from(["bench", "http"]).expect("parse");
        let frame = Frame {
            cmd: &cli.command,
            scenario: "http",
            description: String::new(),
            columns: Vec::new(),
            notes: Vec::new(),
            backends: Vec::new(),
            unavailable: Vec::new(),
            rows: vec!["switchyard:round_robin".into(), "nginx:round_robin".into()],
            asked: vec!["switchyard:round_robin".into(), "nginx:round_robin".into()],
        };
        let run = |v: f64| {
            let mut r = RunResult::default();
            r.set("req_per_cpu_s", v);
            r
        };
        let mut results = Measured::new();
        results.insert(
            "switchyard:round_robin".into(),
            (vec![run(200.0), run(210.0)], String::new(), Vec::new()),
        );
        results.insert(
            "nginx:round_robin".into(),
            (vec![run(100.0)], String::new(), Vec::new()),
        );
        let partial = |done| Partial {
            done,
            total: 6,
            interrupted_by: None,
        };
        let goal = |r: &Report| r.checks.first().cloned().expect("a goal");
        let mid = frame.report(&results, Some(partial(3)), serde_json::json!({}));
        let c = goal(&mid);
        assert_eq!(c.met, None, "{c:?}");
        assert!(c.measured.contains("not judged"), "{c:?}");
        // A round's end: judged.
        if let Some(n) = results.get_mut("nginx:round_robin") {
            n.0.push(run(110.0));
        }
        let end = frame.report(&results, Some(partial(4)), serde_json::json!({}));
        assert_eq!(goal(&end).met, Some(true), "{:?}", goal(&end));
        // A failed run counts as finished.
        if let Some(s) = results.get_mut("switchyard:round_robin") {
            s.2.push("run 3: refused".into());
        }
        let failed = frame.report(&results, Some(partial(5)), serde_json::json!({}));
        assert_eq!(goal(&failed).met, None, "{:?}", goal(&failed));
        // A complete report is judged whatever its runs.
        let done = frame.report(&results, None, serde_json::json!({}));
        assert!(goal(&done).met.is_some(), "{:?}", goal(&done));
    }

    #[test]
    fn the_report_folder_is_checked_before_measuring() {
        let tmp = tempfile::tempdir().expect("temp dir");
        // A fresh folder (and its parents) is made.
        let fresh = tmp.path().join("a/b");
        let made = prepare_out(&fresh).expect("a fresh folder");
        assert!(fresh.is_dir());
        // A run that stops before writing anything into them leaves none of them behind.
        drop(made);
        assert!(!tmp.path().join("a").exists());
        let made = prepare_out(&fresh).expect("a fresh folder");
        // One with something in it is kept, and so is a folder that was there before.
        std::fs::write(fresh.join("report.md"), "").expect("write");
        drop(made);
        assert!(fresh.join("report.md").is_file());
        std::fs::remove_file(fresh.join("report.md")).expect("rm");
        drop(prepare_out(&fresh).expect("an empty folder"));
        assert!(fresh.is_dir());
        // One holding a report is refused: its charts and configs would mix with ours.
        std::fs::write(fresh.join("results.json"), "{}").expect("write");
        let e = prepare_out(&fresh).err().map(|e| format!("{e:#}"));
        assert!(e.is_some_and(|e| e.contains("already holds a report")));
        // One left by a bench stopped before its first measurement: configs, no report.
        let early = tmp.path().join("early");
        std::fs::create_dir_all(early.join("configs")).expect("mkdir");
        let e = prepare_out(&early).err().map(|e| format!("{e:#}"));
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("is not empty (it holds configs;")),
            "{e:?}"
        );
        // The probe of a bench killed while writing it is no obstacle.
        let probed = tmp.path().join("probed");
        std::fs::create_dir_all(&probed).expect("mkdir");
        std::fs::write(probed.join(PROBE), "").expect("write");
        assert!(prepare_out(&probed).is_ok());
        // One another bench is writing into, until that one is done.
        let other = tmp.path().join("busy");
        let lock = prepare_out(&other).expect("first bench");
        let e = prepare_out(&other).err().map(|e| format!("{e:#}"));
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("another bench is writing a report into")),
            "{e:?}"
        );
        drop(lock);
        assert!(prepare_out(&other).is_ok());
        // One that cannot be made (a file is in the way).
        let file = tmp.path().join("file");
        std::fs::write(&file, "").expect("write");
        let e = prepare_out(&file.join("out"))
            .err()
            .map(|e| format!("{e:#}"));
        assert!(e.is_some_and(|e| e.contains("cannot create the report folder")));
    }

    #[test]
    fn a_stored_command_with_quoted_words_is_judged_again() {
        // As meta::collect records it: the path with a space comes out quoted.
        let command = crate::child::shell_line([
            "/opt/my bench/bench",
            "http",
            "--targets",
            "switchyard:round_robin",
            "--out",
            "/tmp/bench out",
        ]);
        assert!(command.contains("'/tmp/bench out'"), "{command}");
        let mut report = Report::of(vec![target("switchyard:round_robin", &[120.0])]);
        report.meta = serde_json::json!({ "command": command });
        recheck(&mut report);
        assert_eq!(report.checks.len(), 3, "{:?}", report.checks);
    }

    #[test]
    fn no_redraw_while_a_bench_writes_the_report() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut report = Report::of(vec![target("switchyard:round_robin", &[120.0])]);
        report.write(tmp.path()).expect("write");
        let running = crate::report::lock_folder(tmp.path())
            .expect("lock")
            .expect("free");
        let e = redraw(tmp.path()).err().map(|e| format!("{e:#}"));
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("a bench is still writing the report")),
            "{e:?}"
        );
        drop(running);
        assert!(redraw(tmp.path()).is_ok());
    }

    #[test]
    fn failed_runs_are_kept_for_the_report() {
        let ok = RunResult::default();
        let t = aggregate(
            "switchyard:p2c".into(),
            vec![ok.clone(), ok],
            String::new(),
            vec!["run 3: proxy did not answer".into()],
        );
        assert!(t.ok());
        assert_eq!(t.metric("failed_runs"), Some(1.0));
        assert_eq!(t.errors, vec!["run 3: proxy did not answer".to_owned()]);
    }

    #[test]
    fn every_worker_gets_a_cpu_of_its_own() {
        let cpus = [0, 1, 2, 3];
        let p = Pinning::choose(&cpus, 2, false, true);
        assert_eq!(p.cpus, [2, 3]);
        assert_eq!(p.warning, None);
        let note = p.note(2, false).unwrap_or_default();
        assert!(note.contains("its 2 workers) ran on CPU 2, 3"), "{note}");
        assert_eq!(Pinning::choose(&cpus, 1, false, true).cpus, [3]);
        // Bench keeps a CPU: three workers of four CPUs still pin, four do not.
        assert_eq!(Pinning::choose(&cpus, 3, false, true).cpus, [1, 2, 3]);
        let p = Pinning::choose(&cpus, 4, false, true);
        assert!(p.cpus.is_empty());
        let why = p.warning.clone().unwrap_or_default();
        assert!(
            why.contains("--workers 4") && why.contains("may use 4"),
            "{why}"
        );
        assert!(p.note(4, false).is_some_and(|n| n.contains("not pinned")));
        // Two workers on two CPUs were all pinned to the last one.
        assert!(Pinning::choose(&[0, 1], 2, false, true).warning.is_some());
        // One CPU and one worker: nothing to pin, nothing to warn about.
        assert_eq!(
            Pinning::choose(&[0], 1, false, true),
            Pinning {
                cpus: Vec::new(),
                warning: None
            }
        );
        assert!(Pinning::choose(&cpus, 2, true, true).cpus.is_empty());
        assert!(Pinning::choose(&cpus, 2, false, false).warning.is_some());
    }

    #[test]
    fn ratios_pair_the_same_run_of_each_target() {
        let ours = target("switchyard:round_robin", &[120.0, 140.0, 135.0]);
        let theirs = target("nginx:round_robin", &[100.0, 100.0, 100.0]);
        let text = run_ratios(Some(&ours), Some(&theirs), "req_per_cpu_s", |r| r >= 1.3);
        assert_eq!(text, "; per run 1.20–1.40×, met in 2 of 3 runs");
    }

    #[test]
    fn no_per_run_claim_without_pairs() {
        let one = target("switchyard:round_robin", &[120.0]);
        let other = target("nginx:round_robin", &[100.0]);
        assert_eq!(
            run_ratios(Some(&one), Some(&other), "req_per_cpu_s", |_| true),
            ""
        );
        // A missing target or metric, or runs that do not line up.
        let three = target("nginx:round_robin", &[100.0; 3]);
        assert_eq!(
            run_ratios(Some(&one), Some(&three), "req_per_cpu_s", |_| true),
            ""
        );
        assert_eq!(
            run_ratios(None, Some(&three), "req_per_cpu_s", |_| true),
            ""
        );
        assert_eq!(
            run_ratios(Some(&three), Some(&three), "p99_ms", |_| true),
            ""
        );
    }
}
