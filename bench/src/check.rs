//! The report's figures checked before anyone reads them: a figure that is missing, zero or
//! not a number means a phase measured nothing (`make bench-smoke` fails on it, and so does a
//! full run, after writing the report).

use crate::report::Report;
use crate::stats::Runs;

/// Every figure that must be a positive number, by name, with its value.
fn figures(r: &Report, want: &dyn Fn(&str) -> bool) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = Vec::new();
    let mut runs = |name: String, v: &Runs| out.push((name, v.median()));
    if want("calls") {
        match &r.calls {
            None => runs("calls: the phase".into(), &Runs::default()),
            Some(c) => {
                runs("calls: native p50".into(), &c.native.p50);
                runs("calls: HTTP hook p50".into(), &c.hook.p50);
                runs(
                    "calls: HTTP hook operator path p50".into(),
                    &c.hook_operator.total.p50,
                );
                for p in &c.plugins {
                    let l = p.label;
                    runs(format!("calls: {l} bare p50"), &p.bare.p50);
                    runs(
                        format!("calls: {l} bare without fuel p50"),
                        &p.bare_no_fuel.p50,
                    );
                    runs(
                        format!("calls: {l} operator path p50"),
                        &p.operator.total.p50,
                    );
                    runs(
                        format!("calls: {l} operator path, changed, p50"),
                        &p.changed.total.p50,
                    );
                }
            }
        }
    }
    if want("load") {
        match &r.load {
            None => runs("load: the phase".into(), &Runs::default()),
            Some(loads) => {
                for l in loads {
                    runs(format!("load: {} uncached ms", l.label), &l.uncached_ms);
                    runs(format!("load: {} cached ms", l.label), &l.cached_ms);
                    runs(
                        format!("load: {} one more instance ms", l.label),
                        &l.instantiate_ms,
                    );
                }
            }
        }
    }
    if want("e2e") {
        match &r.e2e {
            None => runs("end to end: the phase".into(), &Runs::default()),
            Some(e) => {
                for (who, s) in [("wasmop", &e.wasmop), ("native", &e.native)] {
                    runs(format!("end to end: {who} converge s"), &s.converge_s);
                    runs(format!("end to end: {who} converge rate"), &s.converge_rate);
                    let rpp = &s.converge_requests_per_parent;
                    runs(
                        format!("end to end: {who} converge requests per parent"),
                        rpp,
                    );
                    runs(
                        format!("end to end: {who} converge CPU ms"),
                        &s.converge_cpu_ms,
                    );
                    runs(format!("end to end: {who} restart s"), &s.restart_s);
                    runs(
                        format!("end to end: {who} RSS converged MiB"),
                        &s.rss_after_mib,
                    );
                }
            }
        }
    }
    if want("scale") {
        match &r.scale {
            None => out.push(("memory and scale: the phase".into(), f64::NAN)),
            Some(s) => {
                for (which, steps) in [
                    ("same", &s.same),
                    ("distinct", &s.distinct),
                    ("native", &s.native),
                ] {
                    if steps.is_empty() {
                        out.push((format!("memory and scale: {which}"), f64::NAN));
                    }
                    for step in steps {
                        let k = step.controllers;
                        out.push((
                            format!("memory and scale: {which} k={k} RSS MiB"),
                            step.rss_mib,
                        ));
                        out.push((
                            format!("memory and scale: {which} k={k} watches"),
                            step.watches,
                        ));
                    }
                }
            }
        }
    }
    if want("scaleout") {
        match &r.scaleout {
            None => out.push(("scale-out: the phase".into(), f64::NAN)),
            Some(so) => {
                for c in &so.counts {
                    let n = c.replicas.len();
                    out.push((format!("scale-out: {n} replicas converge s"), c.converge_s));
                    out.push((
                        format!("scale-out: {n} replicas rebalance s"),
                        c.rebalance_s,
                    ));
                    for (i, rep) in c.replicas.iter().enumerate() {
                        out.push((
                            format!("scale-out: {n} replicas, replica {i} RSS MiB"),
                            rep.rss_mib,
                        ));
                    }
                }
            }
        }
    }
    out
}

/// The figures that are missing (NaN), zero, negative or infinite, named.
pub fn problems(r: &Report, want: &dyn Fn(&str) -> bool) -> Vec<String> {
    figures(r, want)
        .into_iter()
        .filter(|(_, v)| !(v.is_finite() && *v > 0.0))
        .map(|(name, v)| format!("{name} = {v}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_that_measured_nothing_is_named() {
        let r = Report::new(true, None);
        let all = |_: &str| true;
        let p = problems(&r, &all);
        assert!(
            p.iter().any(|p| p.starts_with("calls: the phase = NaN")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|p| p.starts_with("scale-out: the phase")),
            "{p:?}"
        );
        let none = |_: &str| false;
        assert!(problems(&r, &none).is_empty());
    }

    #[test]
    fn a_zero_figure_is_named() {
        let mut r = Report::new(true, None);
        r.scaleout = Some(crate::scaleout::ScaleOutReport {
            controllers: 1,
            parents: 1,
            counts: vec![crate::scaleout::Count {
                replicas: vec![crate::scaleout::Replica {
                    controllers: 1,
                    rss_mib: 0.0,
                    watches: 3.0,
                }],
                converge_s: 1.0,
                rebalance_s: 1.0,
                moved: 0,
            }],
        });
        let only = |p: &str| p == "scaleout";
        assert_eq!(
            problems(&r, &only),
            vec!["scale-out: 1 replicas, replica 0 RSS MiB = 0".to_string()]
        );
    }
}
