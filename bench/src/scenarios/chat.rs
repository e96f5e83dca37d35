//! `chat`: Socket.IO clients in rooms through the proxy to three chat nodes sharing a
//! Redis, each client sending at a fixed rate; delivered messages/s, end-to-end delivery
//! latency and the nodes' CPU. Then the same against the reference Node.js cluster
//! (socket.io + @socket.io/redis-adapter, bench/node/), for the ratio.

use std::time::Duration;

use super::{compare, run_ratios, ChatPlan, ChatVariant, Plan};
use crate::backends::Backends;
use crate::cli::Common;
use crate::load::socketio::{run as run_chat, ChatLoad, ChatOutcome};
use crate::procstat::{low_precision_mark, set_per_cpu, MIN_CPU_SECONDS};
use crate::report::{col, Check, Mark, RunResult, TargetReport};
use crate::stats::Percentiles;
use crate::targets::{Running, Strategy};

const SWITCHYARD: &str = "[chat-node]";
const NODE: &str = "[node.js]";

pub fn plan(
    common: &Common,
    rooms: usize,
    rate: f64,
    budget: Option<Budget>,
    max_p99: Duration,
    nodes: usize,
) -> Plan {
    // One runtime thread per node, as each Node.js process has one event loop: three
    // multi-threaded runtimes on two cores spend their time parking and waking workers.
    // The figure compared is per CPU-second either way.
    let ours = [
        "--redis",
        "{redis}",
        "--sessions",
        "shared",
        "--rate-limit",
        "1000000/1s",
        // Every client is on one address (the proxy forwards 127.0.0.1): the per-client
        // limits would count them all as one.
        "--max-sessions-per-client",
        "0",
        "--new-user-rate-limit",
        "1000000/1s",
        "--create-rate-limit",
        "1000000/1s",
        "--threads",
        "1",
    ]
    .map(str::to_owned)
    .to_vec();
    let reference = ["--redis", "{redis}"].map(str::to_owned).to_vec();
    let load = format!(
        "{} Socket.IO clients (WebSocket transport) in {rooms} rooms through the proxy to \
         {nodes} nodes sharing one redis-server; every member of the room (the sender too) \
         receives each message. Rows `{SWITCHYARD}` are Switchyard's chat nodes, rows \
         `{NODE}` the reference Node.js cluster (socket.io + @socket.io/redis-adapter, one \
         process per node).",
        common.connections
    );
    let (description, columns, notes) = match budget {
        None => (
            format!(
                "{load} Each client sends {rate} messages/s for {:?}.",
                common.duration
            ),
            vec![
                col("delivered_per_s", "delivered/s", 0),
                col("delivery_pct", "delivered %", 1),
                col("p50_ms", "p50 ms", 2),
                col("p99_ms", "p99 ms", 2),
                col("p999_ms", "p99.9 ms", 2),
                col("node_cpu_pct", "nodes CPU %", 0),
                col("delivered_per_cpu_s", "delivered/node-CPU-s", 0)
                    .marked(low_precision_mark("delivered_per_cpu_s")),
                col("redis_cpu_pct", "redis CPU %", 0),
                col("redis_us_per_msg", "redis µs/msg", 1),
                col(
                    "delivered_per_cpu_s_with_redis",
                    "delivered/CPU-s with redis",
                    0,
                )
                .marked(low_precision_mark("delivered_per_cpu_s_with_redis")),
                col("connected", "connected", 0),
                col("rejected", "rejected sends", 0),
            ],
            vec![
                "`delivered/node-CPU-s` divides deliveries by the CPU seconds of all nodes \
                 (user + system, /proc) at the same offered load; `delivered/CPU-s with \
                 redis` adds the shared redis-server's (the proxy is counted in neither). It \
                 flatters a cluster that has fallen behind (an event loop \
                 with a backlog handles many messages per wake-up): `--cpu-limit` compares \
                 sustained load at equal CPU instead. `redis µs/msg` is the redis-server's \
                 CPU time per message sent."
                    .into(),
                crate::procstat::coarse_cpu_note(),
            ],
        ),
        Some(Budget { cpus, with_redis }) => (
            format!(
                "{load} All nodes of a cluster{} share {cpus} CPU (one cgroup with a CFS \
                 quota, on one CPU unless --no-pin). After a warm-up (at the first rate until \
                 it is sustained, 4 tries at most), each client sends {rate} messages/s for \
                 {:?}, then √2 times more per step, until a step's p99 delivery latency \
                 exceeds {max_p99:?} or a message is lost or refused; the last step before is \
                 what the cluster sustains.",
                if with_redis {
                    " and the redis-server they use"
                } else {
                    ""
                },
                common.duration
            ),
            vec![
                col("sustained_per_s", "sustained delivered/s", 0).marked(Mark {
                    key: "ladder_topped".into(),
                    text: "(ladder's top)".into(),
                    legend: "every step of the ladder was sustained (none failed within \
                             --steps): this is where the ladder ended, not the cluster's \
                             limit (a lower bound), and a goal it cannot decide is not \
                             judged. Raise --steps or --rate."
                        .into(),
                }),
                col("sustained_rate", "msgs/s per client", 1),
                col("p50_ms", "p50 ms", 2),
                col("p99_ms", "p99 ms", 2),
                col("budget_used_pct", "CPU budget used %", 0),
                col("delivered_per_cpu_s", "delivered/node-CPU-s", 0)
                    .marked(low_precision_mark("delivered_per_cpu_s")),
                col("redis_cpu_pct", "redis CPU %", 0),
                col("redis_us_per_msg", "redis µs/msg", 1),
                col("next_rate", "next step msgs/s", 1),
                col("next_delivery_pct", "its delivered %", 1),
                col("next_p99_ms", "its p99 ms", 0),
                col("next_budget_used_pct", "its budget used %", 0),
            ],
            vec![
                "`sustained delivered/s` is the highest step with ≥ 99.9% of the promised \
                 deliveries, no refused send and p99 within the bound, with both clusters' \
                 nodes limited to the same CPU: the delivered messages/s at equal CPU. The \
                 `next step` columns say why the ladder stopped; a next step that used well \
                 under its CPU budget was stopped by something else (the load generator, the \
                 proxy or redis-server, which are not limited). `redis CPU %` is the shared \
                 redis-server's use at the sustained step (inside the budget with \
                 --limit-redis), `redis µs/msg` its CPU time per message sent."
                    .into(),
                crate::procstat::coarse_cpu_note(),
            ],
        ),
    };
    Plan {
        name: "chat",
        description,
        default_targets: "switchyard:least_conn",
        default_strategy: Strategy::LeastConn,
        delays: Vec::new(),
        fresh_backends: true,
        allow_direct: false,
        columns,
        notes,
        chat: Some(ChatPlan {
            nodes,
            variants: vec![
                ChatVariant {
                    label: SWITCHYARD.into(),
                    args: ours,
                    node_reference: false,
                },
                ChatVariant {
                    label: NODE.into(),
                    args: reference,
                    node_reference: true,
                },
            ],
            cpu_limit: budget.map(|b| b.cpus),
            limit_redis: budget.is_some_and(|b| b.with_redis),
        }),
    }
}

pub async fn measure(
    common: &Common,
    rooms: usize,
    rate: f64,
    ladder: Ladder,
    running: &Running,
    backends: &mut Backends,
) -> anyhow::Result<RunResult> {
    let mut r = RunResult::default();
    let Some(budget) = backends.cpu_limit().map(|l| Budget {
        cpus: l.cpus,
        with_redis: backends.redis_in_budget(),
    }) else {
        let step = Step::run(common, rooms, rate, running, backends)
            .await?
            .serving()?;
        step.record_headline(&mut r, None);
        return Ok(r);
    };
    r.set("cpu_limit", budget.cpus);
    r.set(
        "budget_includes_redis",
        f64::from(u8::from(budget.with_redis)),
    );
    r.set("max_p99_ms", ladder.max_p99.as_secs_f64() * 1e3);
    let mut sustained: Option<Step> = None;
    let mut failed: Option<Step> = None;
    // A JIT (Node.js) compiles its hot paths in the first seconds of load, which within a
    // small budget takes several steps' time and must not count against the first one:
    // warm up at the first rate until it is sustained (a few tries at most).
    for k in 0..WARMUP_TRIES {
        settle(backends, budget.cpus).await;
        let warmup = Step::run(common, rooms, rate, running, backends).await?;
        r.set("warmup_steps", f64::from(k + 1));
        // A cluster just started in a small budget can miss the handshakes' time limit, or
        // its health checks' and be out of the proxy's rotation for a moment: another try
        // after it has settled, as for a step it did not sustain.
        let warmup = match warmup.serving() {
            Ok(warmup) => warmup,
            Err(_) if k + 1 < WARMUP_TRIES => continue,
            Err(e) => return Err(e),
        };
        r.set("warmup_p99_ms", warmup.percentiles().p99);
        if warmup.sustained(ladder.max_p99) {
            break;
        }
    }
    let mut rates = Rates::new(rate, &ladder);
    while let Some((name, step_rate)) = rates.next() {
        settle(backends, budget.cpus).await;
        let mut step = Step::run(common, rooms, step_rate, running, backends).await?;
        // As at the warm-up: a cluster that the step before left behind can miss the
        // handshakes' time limit, which says nothing of this step's rate (no message was
        // sent): another try once it has settled.
        if step.outcome.connected == 0 {
            settle(backends, budget.cpus).await;
            step = Step::run(common, rooms, step_rate, running, backends).await?;
        }
        let step = step.serving()?;
        step.record_point(&mut r, &name);
        let ok = step.sustained(ladder.max_p99);
        if ok && name.starts_with("step") {
            r.set("ladder_step", rates.ladder_index());
        }
        rates.outcome(ok);
        if ok {
            sustained = Some(step);
        } else {
            failed = Some(step);
        }
    }
    // Without a failed step the ladder ran out first: `sustained` is a lower bound, and
    // two clusters that both sustained the whole ladder compared as equal (1.00×, goal
    // missed) although neither was at its limit.
    r.set("ladder_topped", f64::from(u8::from(failed.is_none())));
    if let Some(step) = &failed {
        step.record(&mut r, "next_", Some(budget));
        r.set("next_rate", step.rate);
    }
    match sustained {
        Some(step) => {
            step.record_headline(&mut r, Some(budget));
            r.set("sustained_rate", step.rate);
            r.set("sustained_per_s", step.delivered_per_s());
        }
        None => r.set("sustained_per_s", 0.0),
    }
    Ok(r)
}

/// The CPU each cluster gets.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub cpus: f64,
    /// The shared redis-server counts against it too.
    pub with_redis: bool,
}

/// With a CPU limit, the rate rises by √2 per step until a step is not sustained; then
/// `refine` more steps bisect (in ratio) between the last sustained and the failed rate.
pub struct Ladder {
    /// A sustained step's p99 delivery latency stays within this.
    pub max_p99: Duration,
    pub steps: u32,
    pub refine: u32,
}

/// Warm-up steps at most before the ladder starts anyway.
const WARMUP_TRIES: u32 = 4;

/// Waits (at most 10 s) until the nodes are nearly idle: a step that was not sustained
/// leaves a backlog, which must not count against the next one.
async fn settle(backends: &Backends, cpus: f64) {
    const SAMPLE: Duration = Duration::from_millis(250);
    for _ in 0..40 {
        let before = backends.cpu_seconds();
        tokio::time::sleep(SAMPLE).await;
        if backends.cpu_seconds() - before < 0.1 * cpus * SAMPLE.as_secs_f64() {
            return;
        }
    }
}

/// The rates a ladder tries, each named for the report (`step<k>`, `refine<j>`).
struct Rates {
    first: f64,
    steps: u32,
    refine: u32,
    /// Ladder steps tried so far, refinement steps tried so far.
    tried: (u32, u32),
    sustained: Option<f64>,
    failed: Option<f64>,
    current: f64,
}

impl Rates {
    fn new(first: f64, ladder: &Ladder) -> Rates {
        Rates {
            first,
            steps: ladder.steps,
            refine: ladder.refine,
            tried: (0, 0),
            sustained: None,
            failed: None,
            current: first,
        }
    }

    /// The next step, or None when the ladder is done.
    fn next(&mut self) -> Option<(String, f64)> {
        let (k, j) = self.tried;
        if self.failed.is_none() {
            if k == self.steps {
                return None;
            }
            self.tried.0 += 1;
            self.current = self.first * 2f64.powf(f64::from(k) / 2.0);
            return Some((format!("step{k}"), self.current));
        }
        // Between the last sustained and the failed rate; nothing to narrow without both.
        let (lo, hi) = (self.sustained?, self.failed?);
        if j == self.refine {
            return None;
        }
        self.tried.1 += 1;
        self.current = (lo * hi).sqrt();
        Some((format!("refine{j}"), self.current))
    }

    /// The index of the last ladder step tried.
    fn ladder_index(&self) -> f64 {
        f64::from(self.tried.0.saturating_sub(1))
    }

    fn outcome(&mut self, sustained: bool) {
        if sustained {
            self.sustained = Some(self.current);
        } else {
            self.failed = Some(self.current);
        }
    }
}

/// One load level: every client sends at `rate` for the scenario's duration.
struct Step {
    rate: f64,
    clients: usize,
    outcome: ChatOutcome,
    /// CPU seconds of all nodes during the step.
    cpu: f64,
    /// CPU seconds of the shared redis-server during the step.
    redis_cpu: Option<f64>,
    secs: f64,
}

impl Step {
    async fn run(
        common: &Common,
        rooms: usize,
        rate: f64,
        running: &Running,
        backends: &Backends,
    ) -> anyhow::Result<Step> {
        let clients = common.connections.max(1);
        let load = ChatLoad {
            addr: running.addr,
            clients,
            rooms,
            rate,
            duration: common.duration,
            nodes: backends.ids(),
        };
        let cpu0 = backends.cpu_seconds();
        let redis0 = backends.redis_cpu_seconds();
        let outcome = run_chat(load).await;
        let cpu = backends.cpu_seconds() - cpu0;
        let redis_cpu = backends.redis_cpu_seconds().zip(redis0).map(|(b, a)| b - a);
        Ok(Step {
            rate,
            clients,
            outcome,
            cpu,
            redis_cpu,
            secs: common.duration.as_secs_f64().max(1e-3),
        })
    }

    /// The step, if any client joined: one that none did measured nothing.
    fn serving(self) -> anyhow::Result<Self> {
        if self.outcome.connected == 0 {
            anyhow::bail!("no client connected");
        }
        Ok(self)
    }

    fn delivered_per_s(&self) -> f64 {
        self.outcome.delivered as f64 / self.secs
    }

    fn delivery_pct(&self) -> f64 {
        100.0 * self.outcome.delivered as f64 / self.outcome.expected.max(1) as f64
    }

    fn percentiles(&self) -> Percentiles {
        Percentiles::of(&self.outcome.latency)
    }

    /// Every client in, nothing refused or lost, latency within the bound.
    fn sustained(&self, max_p99: Duration) -> bool {
        self.outcome.connected == self.clients as u64
            && self.outcome.rejected == 0
            && self.delivery_pct() >= 99.9
            && self.percentiles().p99 <= max_p99.as_secs_f64() * 1e3
    }

    /// The step as one point of the ladder's curves, as `<name>_rate` etc.
    fn record_point(&self, r: &mut RunResult, name: &str) {
        r.set(&format!("{name}_rate"), self.rate);
        r.set(&format!("{name}_delivered_per_s"), self.delivered_per_s());
        r.set(&format!("{name}_p99_ms"), self.percentiles().p99);
    }

    /// The step as the run's result: its metrics, latency and spread over the nodes.
    fn record_headline(&self, r: &mut RunResult, budget: Option<Budget>) {
        self.record(r, "", budget);
        r.latency = Some(self.percentiles());
        r.per_backend = self.outcome.per_node.iter().map(|c| *c as f64).collect();
    }

    /// The step's metrics under `prefix`.
    fn record(&self, r: &mut RunResult, prefix: &str, budget: Option<Budget>) {
        let o = &self.outcome;
        let p = self.percentiles();
        // Deliveries per CPU-second of these CPU times, set once `set` is done with `r`.
        let mut per_cpu: Vec<(&str, f64)> = Vec::new();
        let mut set = |key: &str, value: f64| r.set(&format!("{prefix}{key}"), value);
        set("delivered_per_s", self.delivered_per_s());
        set("expected_per_s", o.expected as f64 / self.secs);
        set("delivery_pct", self.delivery_pct());
        set("p50_ms", p.p50);
        set("p99_ms", p.p99);
        set("p999_ms", p.p999);
        set("node_cpu_pct", 100.0 * self.cpu / self.secs);
        if let Some(redis) = self.redis_cpu {
            set("redis_cpu_pct", 100.0 * redis / self.secs);
            // The shared server's work per message, whatever a cluster keeps there: the
            // reference only publishes; chat-node also checks membership and the rate
            // limit and appends history and the recovery stream.
            // Both from enough CPU time only (procstat::MIN_CPU_SECONDS): a one-tick
            // redis-server gave 833 µs per message, and nodes + redis more deliveries
            // per CPU-second than the nodes alone.
            if o.sent > 0 && redis >= MIN_CPU_SECONDS {
                set("redis_us_per_msg", 1e6 * redis / o.sent as f64);
            }
            per_cpu.push(("delivered_per_cpu_s_with_redis", self.cpu + redis));
        }
        if let Some(Budget { cpus, with_redis }) = budget {
            let redis = if with_redis { self.redis_cpu } else { None };
            let used = self.cpu + redis.unwrap_or(0.0);
            set("budget_used_pct", 100.0 * used / self.secs / cpus);
        }
        per_cpu.push(("delivered_per_cpu_s", self.cpu));
        set("connected", o.connected as f64);
        set("sent", o.sent as f64);
        set("acked", o.acked as f64);
        set("rejected", o.rejected as f64);
        for (key, cpu) in per_cpu {
            set_per_cpu(r, &format!("{prefix}{key}"), o.delivered as f64, cpu);
        }
    }
}

pub fn checks(reports: &[TargetReport]) -> Vec<Check> {
    let row = |label: &str| {
        reports
            .iter()
            .find(|r| r.ok() && r.target.starts_with("switchyard") && r.target.ends_with(label))
    };
    let (ours, theirs) = (row(SWITCHYARD), row(NODE));
    let pair = |key: &str| Some((ours?.metric(key)?, theirs?.metric(key)?));
    let runs = |key: &str, goal: fn(f64) -> bool| run_ratios(ours, theirs, key, goal);
    const GOAL: &str = "chat: ≥ 3× the delivered messages/s of the Node.js cluster at equal CPU";
    const P99: &str = "chat: lower p99 delivery latency than the Node.js cluster";
    if let Some(cpus) = ours.and_then(|r| r.metric("cpu_limit")) {
        let bound = ours.and_then(|r| r.metric("max_p99_ms")).unwrap_or(0.0);
        let what = match ours.and_then(|r| r.metric("budget_includes_redis")) {
            Some(1.0) => "nodes and redis-server",
            _ => "nodes",
        };
        // Compare latency at the same load: the highest step of the common ladder that
        // the Node.js cluster sustained (refined steps differ between the clusters).
        let step = theirs.and_then(|r| r.metric("ladder_step")).unwrap_or(0.0);
        let key = format!("step{step:.0}_p99_ms");
        let rate = ours.and_then(|r| r.metric(&format!("step{step:.0}_rate")));
        let topped =
            |r: Option<&TargetReport>| r.and_then(|r| r.metric("ladder_topped")) == Some(1.0);
        let (ours_topped, theirs_topped) = (topped(ours), topped(theirs));
        let mut goal = compare(GOAL, pair("sustained_per_s"), |a, b| {
            let how = format!(
                "sustained with each cluster's {what} limited to {cpus} CPU and p99 ≤ \
                     {bound:.0} ms"
            );
            if b <= 0.0 {
                let text = format!(
                    "{a:.0} vs none: the Node.js cluster sustained no step ({how}); start \
                         lower with --rate"
                );
                return (text, false);
            }
            let text = format!(
                "{a:.0} vs {b:.0} deliveries/s {how} = {:.2}×{}",
                a / b.max(1e-9),
                runs("sustained_per_s", |r| r >= 3.0)
            );
            (text, a >= 3.0 * b)
        });
        if let Some(met) = goal.met {
            // A topped ladder's figure is a lower bound: chat-node's can only turn a
            // miss into a meet, the reference's only a meet into a miss.
            let decided = match (ours_topped, theirs_topped) {
                (false, false) => true,
                (true, false) => met,
                (false, true) => !met,
                (true, true) => false,
            };
            if !decided {
                goal.met = None;
                goal.measured.push_str(
                    " — not judged: the ladder ended before a cluster's limit (ladder's \
                     top); raise --steps or --rate",
                );
            }
        }
        return vec![
            goal,
            compare(P99, pair(&key), |a, b| {
                let at = rate.map_or(String::new(), |r| format!(" at {r:.1} msgs/s per client"));
                let per_run = runs(&key, |r| r < 1.0);
                (format!("{a:.2} ms vs {b:.2} ms{at}{per_run}"), a < b)
            }),
        ];
    }
    vec![
        compare(GOAL, pair("delivered_per_cpu_s"), |a, b| {
            (
                format!(
                    "{a:.0} vs {b:.0} deliveries per node-CPU-second at the same offered load = \
                     {:.2}×{}",
                    a / b.max(1e-9),
                    runs("delivered_per_cpu_s", |r| r >= 3.0)
                ),
                a >= 3.0 * b,
            )
        }),
        compare(P99, pair("p99_ms"), |a, b| {
            let per_run = runs("p99_ms", |r| r < 1.0);
            (format!("{a:.2} ms vs {b:.2} ms{per_run}"), a < b)
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ladder(steps: u32, refine: u32) -> Ladder {
        Ladder {
            max_p99: Duration::from_millis(100),
            steps,
            refine,
        }
    }

    /// Drives the rates with a cluster that sustains up to `capacity`.
    fn tried(first: f64, ladder: &Ladder, capacity: f64) -> Vec<(String, f64)> {
        let mut rates = Rates::new(first, ladder);
        let mut out = Vec::new();
        while let Some((name, rate)) = rates.next() {
            rates.outcome(rate <= capacity);
            out.push((name, rate));
        }
        out
    }

    #[test]
    fn the_ladder_climbs_by_root_two_then_bisects_in_ratio() {
        let t = tried(4.0, &ladder(12, 2), 7.0);
        let names: Vec<&str> = t.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["step0", "step1", "step2", "refine0", "refine1"]);
        let rates: Vec<f64> = t.iter().map(|(_, r)| *r).collect();
        let root2 = 2f64.sqrt();
        let expect = [4.0, 4.0 * root2, 8.0, (4.0 * root2 * 8.0).sqrt()];
        for (got, want) in rates.iter().zip(expect) {
            assert!((got - want).abs() < 1e-9, "{rates:?}");
        }
        // refine0 (≈ 6.73) was sustained: the last one lies between it and 8.
        assert!(rates[4] > rates[3] && rates[4] < 8.0, "{rates:?}");
    }

    #[test]
    fn a_goal_on_a_ladder_that_ran_out_is_judged_only_when_the_bound_decides_it() {
        let cluster = |label: &str, sustained: f64, topped: bool| {
            let mut t =
                TargetReport::unavailable(format!("switchyard:least_conn {label}"), "ok".into());
            for (k, v) in [
                ("cpu_limit", 0.3),
                ("sustained_per_s", sustained),
                ("ladder_topped", f64::from(u8::from(topped))),
            ] {
                t.metrics.insert(k.into(), v);
            }
            t
        };
        let met = |ours: (f64, bool), theirs: (f64, bool)| {
            let reports = [
                cluster(SWITCHYARD, ours.0, ours.1),
                cluster(NODE, theirs.0, theirs.1),
            ];
            let goal = checks(&reports)
                .into_iter()
                .next()
                .expect("the throughput goal");
            (goal.met, goal.measured)
        };
        // The audit's run: both sustained all of --steps 2, 102 vs 102.
        let (m, text) = met((102.0, true), (102.0, true));
        assert_eq!(m, None, "{text}");
        assert!(text.contains("not judged"), "{text}");
        assert_eq!(met((102.0, false), (102.0, false)).0, Some(false));
        // A lower bound already 3× over, or a reference's lower bound already out of reach.
        assert_eq!(met((400.0, true), (100.0, false)).0, Some(true));
        assert_eq!(met((200.0, true), (100.0, false)).0, None);
        assert_eq!(met((200.0, false), (100.0, true)).0, Some(false));
        assert_eq!(met((400.0, false), (100.0, true)).0, None);
    }

    #[test]
    fn a_ladder_that_never_fails_or_never_passes_is_not_refined() {
        let all = tried(1.0, &ladder(3, 2), 1e9);
        assert_eq!(all.len(), 3);
        let none = tried(1.0, &ladder(3, 2), 0.5);
        assert_eq!(none.len(), 1, "{none:?}");
    }
}
