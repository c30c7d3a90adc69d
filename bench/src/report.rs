//! The Markdown report: every table with the machine, profile and date it was measured on.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use crate::calls::{CallReport, Figure};
use crate::e2e::{E2eReport, Requests, SystemRuns};
use crate::load::PluginLoad;
use crate::scale::{ScaleReport, Step};
use crate::scaleout::ScaleOutReport;
use crate::stats::Runs;

const HAND_WRITTEN: &str = "<!-- hand-written -->";

pub struct Report {
    pub smoke: bool,
    pub build_seconds: Option<f64>,
    pub date: String,
    pub load_before: String,
    pub load_after: String,
    pub elapsed: Duration,
    pub kubernetes: Option<String>,
    pub calls: Option<CallReport>,
    pub load: Option<Vec<PluginLoad>>,
    pub e2e: Option<E2eReport>,
    pub scale: Option<ScaleReport>,
    pub scaleout: Option<ScaleOutReport>,
}

fn sh(cmd: &str) -> String {
    std::process::Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

impl Report {
    pub fn new(smoke: bool, build_seconds: Option<f64>) -> Self {
        Report {
            smoke,
            build_seconds,
            date: sh("date -u '+%Y-%m-%d %H:%M UTC'"),
            load_before: loadavg(),
            load_after: String::new(),
            elapsed: Duration::ZERO,
            kubernetes: None,
            calls: None,
            load: None,
            e2e: None,
            scale: None,
            scaleout: None,
        }
    }

    pub fn finish(&mut self, elapsed: Duration) {
        self.elapsed = elapsed;
        self.load_after = loadavg();
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let profile = if cfg!(debug_assertions) {
            "debug (`dev` profile: dependencies at opt-level 2, our crates at 0)"
        } else {
            "release"
        };
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2");
        let mem = sh("awk '/MemTotal/ {printf \"%.0f GiB\", $2/1048576}' /proc/meminfo");
        let commit = sh("git describe --always --dirty --abbrev=7 2>/dev/null");
        let _ = writeln!(s, "# Benchmarks\n");
        if self.smoke {
            let _ = writeln!(
                s,
                "**Smoke run: tiny sizes, the figures mean nothing.** `make bench` writes the real ones.\n"
            );
        }
        let _ = writeln!(s, "| | |\n|---|---|");
        let _ = writeln!(s, "| date | {} |", self.date);
        let _ = writeln!(s, "| machine | {cores} cores ({}), {mem} |", cpu.trim());
        let _ = writeln!(s, "| build profile | {profile} |");
        let _ = writeln!(s, "| commit | {commit} |");
        if let Some(k) = &self.kubernetes {
            let _ = writeln!(
                s,
                "| control plane | kube-apiserver {k} (localcp, on the same machine) |"
            );
        }
        let _ = writeln!(
            s,
            "| load average (1/5/15 min) | {} at the start, {} at the end |",
            self.load_before, self.load_after
        );
        if let Some(b) = self.build_seconds {
            let _ = writeln!(
                s,
                "| release build | {b:.0} s (`cargo build --release` as `make bench` ran it: incremental when a release tree exists) |"
            );
        }
        let _ = writeln!(s, "| benchmark run | {:.0} s |", self.elapsed.as_secs_f64());
        let _ = writeln!(
            s,
            "\nRerun: `make bench` (all of it, release; rewrites this file), or \
             `hack/bench.sh --only calls,load` for some phases. Smoke: `make bench-smoke`.\n\
             Noisy figures are the median of the runs with (min–max).\n"
        );
        if let Some(c) = &self.calls {
            self.calls_md(&mut s, c);
        }
        if let Some(l) = &self.load {
            load_md(&mut s, l);
        }
        if let Some(e) = &self.e2e {
            e2e_md(&mut s, e);
        }
        if let Some(sc) = &self.scale {
            scale_md(&mut s, sc);
        }
        if let Some(so) = &self.scaleout {
            scaleout_md(&mut s, so);
        }
        self.targets_md(&mut s);
        self.targets_26_md(&mut s);
        s
    }

    /// Issue 26's targets: each with its measured median and range; "met" means met at the
    /// median, and a range that reaches across the target says "within noise".
    fn targets_26_md(&self, s: &mut String) {
        let mut rows: Vec<(String, String, String)> = Vec::new();
        // (median meets, range: every run meets / no run meets / mixed)
        let verdict = |runs: &Runs, meets: &dyn Fn(f64) -> bool| {
            let (lo, hi) = (meets(runs.min()), meets(runs.max()));
            match (meets(runs.median()), lo == hi) {
                (true, true) => "yes".to_string(),
                (true, false) => {
                    "yes at the median (the range reaches across: within noise)".into()
                }
                (false, true) => "**no**".into(),
                (false, false) => "**no** at the median (the range reaches across)".into(),
            }
        };
        if let Some(c) = &self.calls {
            if let Some(rust) = c.plugins.iter().find(|p| p.label == "Rust") {
                let p50 = &rust.operator.total.p50;
                rows.push((
                    "Rust call, operator path, p50 ≤ 80 µs".into(),
                    format!("{} µs", p50.show(1)),
                    verdict(p50, &|v| v <= 80.0),
                ));
                let ratio = ratio_runs(&c.hook_operator.total.p50, p50);
                rows.push((
                    "… ≥ 1.8× cheaper than the loopback hook, like for like".into(),
                    format!(
                        "{}× (hook {} µs through the same path)",
                        ratio.show(2),
                        c.hook_operator.total.p50.show(1)
                    ),
                    verdict(&ratio, &|v| v >= 1.8),
                ));
            }
            if let Some(js) = c.plugins.iter().find(|p| p.label == "JS") {
                let p50 = &js.operator.total.p50;
                rows.push((
                    "JS call, operator path, p50 ≤ 200 µs".into(),
                    format!("{} µs", p50.show(1)),
                    verdict(p50, &|v| v <= 200.0),
                ));
            }
        }
        if let Some(l) = &self.load {
            for p in l.iter().filter(|p| matches!(p.label, "JS" | "Go")) {
                rows.push((
                    format!("cached load, {} < 5 ms", p.label),
                    format!("{} ms", p.cached_ms.show(2)),
                    verdict(&p.cached_ms, &|v| v < 5.0),
                ));
            }
        }
        if let Some(e) = &self.e2e {
            let (w, n) = (&e.wasmop, &e.native);
            let rpp = ratio_runs(
                &w.converge_requests_per_parent,
                &n.converge_requests_per_parent,
            );
            rows.push((
                format!(
                    "converge {} parents: requests per parent ≤ native",
                    e.parents
                ),
                format!(
                    "{} against native {} ({}×)",
                    w.converge_requests_per_parent.show(2),
                    n.converge_requests_per_parent.show(2),
                    rpp.show(2)
                ),
                verdict(&rpp, &|v| v <= 1.0),
            ));
            let rate = ratio_runs(&w.converge_rate, &n.converge_rate);
            rows.push((
                "converge: parents per second ≥ 1.0× native".into(),
                format!("{}×", rate.show(2)),
                verdict(&rate, &|v| v >= 1.0),
            ));
            rows.push((
                "restart, nothing changed: writes per parent 0".into(),
                format!(
                    "{} (native {})",
                    w.restart_writes_per_parent.show(2),
                    n.restart_writes_per_parent.show(2)
                ),
                verdict(&w.restart_writes_per_parent, &|v| v < 0.005),
            ));
        }
        if let Some(sc) = &self.scale
            && let (Some(a), Some(b)) = (sc.same.first(), sc.same.last())
            && b.controllers > a.controllers
        {
            let per = (b.rss_mib - a.rss_mib) / (b.controllers - a.controllers) as f64;
            rows.push((
                format!(
                    "{} WasmControllers, one shared plugin: RSS each ≤ 1.5 MiB",
                    b.controllers
                ),
                format!(
                    "{per:.2} MiB per additional WasmController ({}→{})",
                    a.controllers, b.controllers
                ),
                if per <= 1.5 {
                    "yes".into()
                } else {
                    "**no**".into()
                },
            ));
        }
        if rows.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            "## Targets (issue 26)\n\nRelease build, 2 cores, ratios from this run. A verdict is \
             the median's; where the runs' range reaches across the target it says so.\n\n\
             | target | measured | met |\n|---|---|---|"
        );
        for (t, m, ok) in rows {
            let _ = writeln!(s, "| {t} | {m} | {ok} |");
        }
        let _ = writeln!(s);
    }

    fn calls_md(&self, s: &mut String, c: &CallReport) {
        let _ = writeln!(
            s,
            "## Plugin call\n\nOne Website reconcile: a {} B request (the parent {} B as the plugin \
             sees it, and three current children: its ConfigMap, its Deployment with status, a \
             stale ConfigMap); the answer is two children and a status. {} calls per variant \
             and run, {} run(s), after a warm-up; the variants are interleaved (each run is cut \
             into 10 slices, and every variant makes its share of calls in each slice). Every plugin runs with every limit on \
             (memoryMiB 64, timeoutMs 1000, fuel 10¹⁰), WASI on, as the operator runs it.\n",
            c.request_bytes, c.parent_bytes, c.iterations, c.runs
        );
        let native = c.native.p50.median();
        let hook = c.hook.p50.median();
        let hook_path = c.hook_operator.total.p50.median();
        let _ = writeln!(
            s,
            "| variant | p50 µs | p99 µs | p50 ÷ native | HTTP hook ÷ this, like for like |\n|---|---|---|---|---|"
        );
        // A bare call is compared with the bare hook, a call through the operator's path with
        // the hook through the same path.
        let row = |s: &mut String, name: &str, f: &Figure, hook: f64| {
            let p50 = f.p50.median();
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {:.1}× | {:.2}× |",
                f.p50.show(1),
                f.p99.show(1),
                p50 / native,
                hook / p50
            );
        };
        row(
            s,
            "native Rust function (JSON in, JSON out)",
            &c.native,
            hook,
        );
        row(
            s,
            "HTTP hook on loopback (keep-alive, separate process)",
            &c.hook,
            hook,
        );
        row(
            s,
            "HTTP hook, operator path (the same gather, serialise, parse, plan)",
            &c.hook_operator.total,
            hook_path,
        );
        for p in &c.plugins {
            row(
                s,
                &format!(
                    "{} plugin, bare `Plugin::call` ({} KB)",
                    p.label,
                    p.size_bytes / 1024
                ),
                &p.bare,
                hook,
            );
            row(
                s,
                &format!("{} plugin, bare, without fuel metering", p.label),
                &p.bare_no_fuel,
                hook,
            );
            row(
                s,
                &format!("{} plugin, operator path (below)", p.label),
                &p.operator.total,
                hook_path,
            );
            row(
                s,
                &format!("{} plugin, operator path, every object changed", p.label),
                &p.changed.total,
                hook_path,
            );
        }
        let _ = writeln!(
            s,
            "\n### The operator's path, step by step (p50 µs; p99 in brackets)\n\n\
             What `controller.rs` does around the call: *gather* = each object's JSON as the \
             plugin is shown it (`request::shown`: from the cache when its resourceVersion was \
             seen before, as on a resync or a related object's change; else `kinds::clean` and \
             serialising, the *changed* rows, as after any write to the parent or a child); \
             *serialise* = `request::encode`, the request written around those texts; \
             *dispatch* = `LoadedPlugin::call` minus the time in the plugin (a call slot, \
             `block_in_place` handing the async worker's other tasks to another thread, a lane, \
             and on every 256th call a fresh instance); \
             *plugin* = inside `Plugin::call`; *parse* = size check, `serde_json::from_slice`, \
             response limits; *plan* = `plan::plan`.\n"
        );
        let _ = writeln!(
            s,
            "| plugin | gather | serialise | dispatch | plugin | parse | plan | total | bare call |\n|---|---|---|---|---|---|---|---|---|"
        );
        let f = |f: &Figure| format!("{:.1} [{:.0}]", f.p50.median(), f.p99.median());
        let h = &c.hook_operator;
        let _ = writeln!(
            s,
            "| HTTP hook (*plugin* = the round trip) | {} | {} | {} | {} | {} | {} | {} | {} |",
            f(&h.gather),
            f(&h.serialise),
            f(&h.dispatch),
            f(&h.plugin),
            f(&h.parse),
            f(&h.plan),
            f(&h.total),
            f(&c.hook)
        );
        for (p, changed) in c.plugins.iter().flat_map(|p| [(p, false), (p, true)]) {
            let b = if changed { &p.changed } else { &p.operator };
            let label = if changed {
                format!("{}, changed", p.label)
            } else {
                p.label.to_string()
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                label,
                f(&b.gather),
                f(&b.serialise),
                f(&b.dispatch),
                f(&b.plugin),
                f(&b.parse),
                f(&b.plan),
                f(&b.total),
                f(&p.bare)
            );
        }
        let _ = writeln!(s);
    }

    fn targets_md(&self, s: &mut String) {
        let mut rows: Vec<(String, String, Option<bool>)> = Vec::new();
        if let Some(c) = &self.calls {
            if let Some(rust) = c.plugins.iter().find(|p| p.label == "Rust") {
                let p50 = rust.operator.total.p50.median();
                let bare = rust.bare.p50.median();
                rows.push((
                    "Rust plugin call ≤ 50 µs p50, every limit on".into(),
                    format!("{bare:.1} µs bare, {p50:.1} µs through the operator's path"),
                    Some(p50 <= 50.0),
                ));
                let ratio = c.hook.p50.median() / p50;
                rows.push((
                    "… ≥ 5× cheaper than the loopback HTTP hook".into(),
                    format!(
                        "{ratio:.1}× (operator path), {:.1}× (bare)",
                        c.hook.p50.median() / bare
                    ),
                    Some(ratio >= 5.0),
                ));
            }
            if let Some(js) = c.plugins.iter().find(|p| p.label == "JS") {
                let p50 = js.operator.total.p50.median();
                rows.push((
                    "JS plugin call ≤ 300 µs p50".into(),
                    format!(
                        "{:.1} µs bare, {p50:.1} µs through the operator's path",
                        js.bare.p50.median()
                    ),
                    Some(p50 <= 300.0),
                ));
            }
        }
        if let Some(l) = &self.load {
            let worst = l
                .iter()
                .map(|p| (p.label, p.cached_ms.median()))
                .fold(("", 0.0f64), |a, b| if b.1 > a.1 { b } else { a });
            rows.push((
                "cached plugin load < 5 ms in every language".into(),
                l.iter()
                    .map(|p| format!("{} {:.1} ms", p.label, p.cached_ms.median()))
                    .collect::<Vec<_>>()
                    .join(", "),
                Some(worst.1 < 5.0),
            ));
        }
        if let Some(e) = &self.e2e {
            let ratio = e.wasmop.converge_rate.median() / e.native.converge_rate.median();
            rows.push((
                "end-to-end throughput ≥ 0.9× native".into(),
                format!(
                    "{ratio:.2}× converging {} parents; {:.2}× after a restart; resync CPU per reconcile {:.2}× native's",
                    e.parents,
                    e.wasmop.restart_rate.median() / e.native.restart_rate.median(),
                    e.wasmop.resync_cpu_ms.median() / e.native.resync_cpu_ms.median()
                ),
                Some(ratio >= 0.9),
            ));
            let w = e.wasmop.converge_requests_per_reconcile.median();
            let n = e.native.converge_requests_per_reconcile.median();
            let resync = (
                e.wasmop.resync_requests_per_reconcile.median(),
                e.native.resync_requests_per_reconcile.median(),
            );
            rows.push((
                "API requests per reconcile ≤ native's + 1".into(),
                format!(
                    "converging: wasmop {w:.2}, native {n:.2} per reconcile ({:.1} vs {:.1} per parent); resync: {:.2} vs {:.2}",
                    e.wasmop.converge_requests_per_parent.median(),
                    e.native.converge_requests_per_parent.median(),
                    resync.0,
                    resync.1
                ),
                Some(w <= n + 1.0 && resync.0 <= resync.1 + 1.0),
            ));
        }
        if let Some(sc) = &self.scale
            && let (Some(a), Some(b)) = (sc.distinct.first(), sc.distinct.last())
            && b.controllers > a.controllers
        {
            let per = (b.rss_mib - a.rss_mib) / (b.controllers - a.controllers) as f64;
            let restarted = sc
                .distinct_restarted
                .map(|(k, rss)| (rss - a.rss_mib) / (k - a.controllers).max(1) as f64);
            rows.push((
                "< 10 MB RSS per additional loaded plugin".into(),
                format!(
                    "{per:.1} MiB per WasmController with its own plugin ({}→{}, compiled in-process){}",
                    a.controllers,
                    b.controllers,
                    restarted.map_or(String::new(), |r| format!(
                        "; {r:.1} MiB once restarted (every plugin from the cache)"
                    ))
                ),
                Some(restarted.unwrap_or(per) < 10.0),
            ));
        }
        if rows.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            "## Targets (issue 18)\n\n| target | measured | met |\n|---|---|---|"
        );
        for (t, m, ok) in rows {
            let ok = match ok {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            };
            let _ = writeln!(s, "| {t} | {m} | {ok} |");
        }
        let _ = writeln!(s);
    }
}

/// Run by run `a / b` (the runs of one phase pair up: variants are interleaved, systems
/// alternate).
fn ratio_runs(a: &Runs, b: &Runs) -> Runs {
    Runs(a.0.iter().zip(&b.0).map(|(a, b)| a / b).collect())
}

fn load_md(s: &mut String, loads: &[PluginLoad]) {
    let _ = writeln!(
        s,
        "## Plugin load\n\n`Host::load` as the operator calls it when a WasmController starts: \
         compile (or fetch from the on-disk cache, `--cache-dir`) and start the first instance. \
         *one more instance*: instantiating already compiled code and running its initialisers \
         (what a recycled or additional instance costs). *of which the cache hit*: Extism's \
         `CompiledPlugin::new` alone from a warm cache (wasmtime hashes the module, reads, \
         decompresses and loads the machine code).\n\n\
         | plugin | size | load, no cache (ms) | load, cached (ms) | of which the cache hit (ms) | one more instance (ms) |\n|---|---|---|---|---|---|"
    );
    for l in loads {
        let _ = writeln!(
            s,
            "| {} | {} KB | {} | {} | {} | {} |",
            l.label,
            l.size_bytes / 1024,
            l.uncached_ms.show(1),
            l.cached_ms.show(2),
            l.cache_hit_compile_ms.show(2),
            l.instantiate_ms.show(2)
        );
    }
    let _ = writeln!(s);
}

fn requests_md(s: &mut String, title: &str, w: &Requests, n: &Requests, per: f64) {
    let _ = writeln!(
        s,
        "\n{title} (per parent; first run):\n\n| request | wasmop | native |\n|---|---|---|"
    );
    let mut keys: Vec<&String> = w
        .keys()
        .chain(n.keys())
        .filter(|k| !k.starts_with(crate::e2e::SECONDS))
        .collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let f = |r: &Requests| {
            r.get(k)
                .map_or("".to_string(), |v| format!("{:.2}", v / per))
        };
        let _ = writeln!(s, "| {k} | {} | {} |", f(w), f(n));
    }
}

fn e2e_md(s: &mut String, e: &E2eReport) {
    let _ = writeln!(
        s,
        "## End to end\n\n{} Websites (a 1 KB page each: a ConfigMap and a Deployment child, \
         and a status) created 16 at a time in a fresh namespace, on the local control plane \
         (real kube-apiserver, etcd, kube-controller-manager), {} run(s) per system, \
         alternating which goes first (creating the parents alone took {} s).\n\n\
         - *Converge*: until every parent carries the status its reconcile writes after its \
         children.\n\
         - *Resync* (first run only): the periodic resync in the warm process ({} s after each \
         parent's last reconcile), nothing to change; the rate is as the requeues came due, so \
         it shows the offered load, and CPU per reconcile is the cost.\n\
         - *Restart*: the controller restarted with everything converged: every parent \
         reconciled at once by a cold process, done when the new process has counted a \
         reconcile per parent (wasmop decides from the live objects' managedFields that \
         nothing needs writing; the native controller applies every child and status again; \
         CPU includes the start-up).\n\n\
         Requests are kube-apiserver's `apiserver_request_total` over the phase without watches \
         and the benchmark's own creates. CPU is user+system time from /proc. wasmop runs as \
         its documented least-privilege account and impersonates the team's ServiceAccount; \
         the native controller runs with the admin kubeconfig.\n\n\
         What each side does: both call the same Website logic and write the same children and \
         status with server-side apply; an existing child with a `metadata.uid` precondition, \
         children forced, status not; both prune owned children no longer desired (uid \
         precondition) and record the logic's events. The native controller filters its parents \
         by kube-runtime's generation predicate, so its own status write does not reconcile \
         the parent again; wasmop reconciles on any change of a parent (a plugin may read its \
         labels, annotations or status), and a reconcile after its own status write finds \
         nothing to send. Only wasmop dry-runs (every write \
         of a reconcile but the first), creates a child only if its name is free, checks \
         access and skips an apply that would change nothing; the native controller applies \
         everything on every reconcile, as hand-written controllers commonly do.\n",
        e.parents,
        e.runs,
        e.create_s.show(1),
        e.resync_s
    );
    let _ = writeln!(
        s,
        "| | wasmop (Rust plugin) | native kube-runtime | wasmop ÷ native |\n|---|---|---|---|"
    );
    let row = |s: &mut String, name: &str, f: fn(&SystemRuns) -> &Runs, digits: usize| {
        let (w, n) = (f(&e.wasmop), f(&e.native));
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {:.2} |",
            w.show(digits),
            n.show(digits),
            w.median() / n.median()
        );
    };
    row(s, "converge: time (s)", |r| &r.converge_s, 1);
    row(s, "converge: parents per second", |r| &r.converge_rate, 1);
    row(s, "converge: reconciles", |r| &r.converge_reconciles, 0);
    row(
        s,
        "converge: API requests per parent",
        |r| &r.converge_requests_per_parent,
        2,
    );
    row(
        s,
        "converge: API requests per reconcile",
        |r| &r.converge_requests_per_reconcile,
        2,
    );
    row(
        s,
        "converge: controller CPU per parent (ms)",
        |r| &r.converge_cpu_ms,
        2,
    );
    row(
        s,
        "converge: kube-apiserver CPU per parent (ms)",
        |r| &r.converge_apiserver_cpu_ms,
        2,
    );
    row(
        s,
        "resync: reconciles per second (as they came due)",
        |r| &r.resync_rate,
        0,
    );
    row(
        s,
        "resync: API requests per reconcile",
        |r| &r.resync_requests_per_reconcile,
        2,
    );
    row(
        s,
        "resync: controller CPU per reconcile (ms)",
        |r| &r.resync_cpu_ms,
        3,
    );
    row(
        s,
        "resync: kube-apiserver CPU per reconcile (ms)",
        |r| &r.resync_apiserver_cpu_ms,
        3,
    );
    row(
        s,
        "restart: until every parent reconciled (s)",
        |r| &r.restart_s,
        1,
    );
    row(s, "restart: parents per second", |r| &r.restart_rate, 0);
    row(
        s,
        "restart: reconciles counted by then",
        |r| &r.restart_reconciles,
        0,
    );
    row(
        s,
        "restart: API requests per parent",
        |r| &r.restart_requests_per_parent,
        2,
    );
    row(
        s,
        "restart: writes to parents and children per parent (dry runs included)",
        |r| &r.restart_writes_per_parent,
        2,
    );
    row(
        s,
        "restart: controller CPU per parent, start-up included (ms)",
        |r| &r.restart_cpu_ms,
        2,
    );
    row(s, "RSS before the parents (MiB)", |r| &r.rss_before_mib, 1);
    row(s, "RSS converged (MiB)", |r| &r.rss_after_mib, 1);
    row(
        s,
        "RSS of the restarted process (MiB)",
        |r| &r.rss_restarted_mib,
        1,
    );
    let objects = 3.0 * e.parents as f64;
    // The first run: a fresh operator process (later runs reuse it, and its allocator reuses
    // what the previous run's caches freed).
    let per_obj = |r: &SystemRuns| match (r.rss_before_mib.0.first(), r.rss_after_mib.0.first()) {
        (Some(b), Some(a)) => (a - b) * 1024.0 * 1024.0 / objects,
        _ => f64::NAN,
    };
    let _ = writeln!(
        s,
        "\nRSS per cached object (a parent or a child; converged minus before in the first run, \
         a fresh process for both, over {objects:.0} objects, allocator slack included): wasmop \
         {:.0} B, native {:.0} B. The operator process is reused across runs, so its *RSS before* \
         of later runs holds what earlier runs left to the allocator.",
        per_obj(&e.wasmop),
        per_obj(&e.native)
    );
    // What the dry run costs: requests and kube-apiserver time per parent while converging.
    let sum = |r: &Requests, seconds: bool, dry: bool| -> f64 {
        r.iter()
            .filter(|(k, _)| k.starts_with(crate::e2e::SECONDS) == seconds)
            .filter(|(k, _)| k.ends_with("(dry run)") == dry && !k.ends_with("POST websites"))
            .filter(|(k, _)| crate::e2e::is_write(k))
            .map(|(_, v)| v)
            .sum::<f64>()
            / e.parents as f64
    };
    let (w, n) = (&e.wasmop.converge_breakdown, &e.native.converge_breakdown);
    let _ = writeln!(
        s,
        "\nThe dry run, while converging (first run, per parent): wasmop sent {:.2} dry-run \
         requests that took kube-apiserver {:.1} ms to serve, and {:.2} real writes ({:.1} ms); \
         the native controller sent {:.2} writes ({:.1} ms) and no dry run. A reconcile sends \
         the dry runs of every write but its first at once, and writes when they have passed.",
        sum(w, false, true),
        sum(w, true, true) * 1e3,
        sum(w, false, false),
        sum(w, true, false) * 1e3,
        sum(n, false, false),
        sum(n, true, false) * 1e3,
    );
    if !e.wasmop.restart_results.is_empty() {
        let _ = writeln!(
            s,
            "\nwasmop's reconciles after the restart, by result (first run): {}.",
            e.wasmop.restart_results
        );
    }
    requests_md(
        s,
        "Requests while converging",
        &e.wasmop.converge_breakdown,
        &e.native.converge_breakdown,
        e.parents as f64,
    );
    requests_md(
        s,
        "Requests of the resync wave",
        &e.wasmop.resync_breakdown,
        &e.native.resync_breakdown,
        e.parents as f64,
    );
    requests_md(
        s,
        "Requests after a restart",
        &e.wasmop.restart_breakdown,
        &e.native.restart_breakdown,
        e.parents as f64,
    );
    let _ = writeln!(s);
}

fn scale_md(s: &mut String, sc: &ScaleReport) {
    let _ = writeln!(
        s,
        "## Memory and scale\n\nOne operator process with k WasmControllers, each in its own \
         namespace with its own ServiceAccount (separate teams) and one Website; *same*: every \
         controller loads the same plugin bytes (a cache hit after the first), *distinct*: \
         each its own plugin (the Rust plugin with a custom section naming it, so a distinct \
         sha256 and a compile each). Native: k native controller processes, one per namespace \
         (RSS summed). *Watches*: `apiserver_longrunning_requests{{verb=\"WATCH\"}}` beyond \
         those open before. *New parent*: from creating a Website to its status written, in \
         the first, middle and last namespace. The operator idles at {:.1} MiB RSS with no \
         WasmController.\n\n\
         | k | wasmop same: RSS MiB | watches | new parent ms | wasmop distinct: RSS MiB | watches | new parent ms | add k (s) | native ×k: RSS MiB | watches | new parent ms |\n|---|---|---|---|---|---|---|---|---|---|---|",
        sc.idle_rss_mib
    );
    let empty = Step::default();
    for (i, same) in sc.same.iter().enumerate() {
        let d = sc.distinct.get(i).unwrap_or(&empty);
        let n = sc.native.get(i).unwrap_or(&empty);
        let _ = writeln!(
            s,
            "| {} | {:.1} | {:.0} | {} | {:.1} | {:.0} | {} | {:.1} | {:.1} | {:.0} | {} |",
            same.controllers,
            same.rss_mib,
            same.watches,
            same.latency_ms.show(0),
            d.rss_mib,
            d.watches,
            d.latency_ms.show(0),
            d.add_s,
            n.rss_mib,
            n.watches,
            n.latency_ms.show(0),
        );
    }
    let per = |steps: &[Step]| match (steps.first(), steps.last()) {
        (Some(a), Some(b)) if b.controllers > a.controllers => {
            (b.rss_mib - a.rss_mib) / (b.controllers - a.controllers) as f64
        }
        _ => f64::NAN,
    };
    let _ = writeln!(
        s,
        "\nRSS per additional WasmController: {:.2} MiB (same plugin), {:.2} MiB (distinct \
         plugins); per additional native process: {:.2} MiB.",
        per(&sc.same),
        per(&sc.distinct),
        per(&sc.native)
    );
    if let (Some((k, rss)), Some(first)) = (sc.distinct_restarted, sc.distinct.first()) {
        let per = (rss - first.rss_mib) / (k - first.controllers).max(1) as f64;
        let _ = writeln!(
            s,
            "The operator restarted with the {k} distinct plugins (each now a cache hit, so no \
             compiler heap is left over): {rss:.1} MiB, {per:.2} MiB per additional \
             WasmController."
        );
    }
    let _ = writeln!(s);
}

fn scaleout_md(s: &mut String, so: &ScaleOutReport) {
    let _ = writeln!(
        s,
        "## Scale-out (`--shard`)\n\nThe same {} WasmControllers, each in its own namespace with \
         its own plugin (a compile each) and {} parents in all, run by N replicas of `wasmop run \
         --shard` (fresh processes and plugin caches for each N, started before the \
         WasmControllers are created). *Converge*: from creating the WasmControllers (and \
         changing every parent's content) to every parent showing it. *Per replica*: RSS, \
         WasmControllers run, watches held (`wasmop_watches`: parent and child kinds; one \
         plugin ConfigMap watch per WasmController; its WasmController and shard Lease \
         watches). *Rebalance*: one more replica joins; from its start to every \
         WasmController running where the ring puts it (handovers, plugin compiles on the new \
         replica included). All replicas, the API server and etcd share this machine's cores: \
         throughput is the API server's and the CPU's, not the replicas'; what scale-out buys \
         here is memory per replica.\n\n\
         | replicas | RSS per replica MiB | mean | × one replica | WasmControllers per replica | watches per replica | converge s | one more joins: moved | rebalance s |\n\
         |---|---|---|---|---|---|---|---|---|",
        so.controllers, so.parents
    );
    let mean = |c: &crate::scaleout::Count| {
        c.replicas.iter().map(|r| r.rss_mib).sum::<f64>() / c.replicas.len().max(1) as f64
    };
    let one = so.counts.first().map(mean).unwrap_or(f64::NAN);
    let list = |f: &dyn Fn(&crate::scaleout::Replica) -> String, c: &crate::scaleout::Count| {
        c.replicas.iter().map(f).collect::<Vec<_>>().join(", ")
    };
    for c in &so.counts {
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {:.2} | {} | {} | {:.1} | {} | {:.1} |",
            c.replicas.len(),
            list(&|r| format!("{:.0}", r.rss_mib), c),
            mean(c),
            mean(c) / one,
            list(&|r| r.controllers.to_string(), c),
            list(&|r| format!("{:.0}", r.watches), c),
            c.converge_s,
            c.moved,
            c.rebalance_s,
        );
    }
    let _ = writeln!(s);
}

/// Writes `text` to `path`, keeping a hand-written part of the existing file.
pub fn write(path: &Path, text: &str) -> Result<()> {
    let kept = std::fs::read_to_string(path)
        .ok()
        .and_then(|old| old.find(HAND_WRITTEN).map(|i| old[i..].to_string()));
    let mut out = text.to_string();
    if let Some(kept) = kept {
        out.push('\n');
        out.push_str(&kept);
    }
    std::fs::write(path, out)?;
    Ok(())
}
