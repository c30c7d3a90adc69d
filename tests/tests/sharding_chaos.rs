//! Sharding under chaos: 3 `--shard` replicas, 20 WasmControllers and 120 parents whose
//! content changes every 5 s, while every 20 s for 2 minutes a random replica is killed
//! (SIGKILL) and started again under its name. At the end every WasmController runs where
//! the ring says, every parent shows the last content, and the API server's audit log shows no
//! replica writing for a WasmController while another one ran it. `WASMOP_CHAOS_SEED` picks
//! another sequence of victims (the seed is printed).

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use wasmop_e2e::StopWith;
use wasmop_e2e::shards::{self, Cluster};

/// xorshift64*: the victims, reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

#[tokio::test]
async fn random_kills_for_two_minutes_end_converged_without_two_writers() -> Result<()> {
    let seed = std::env::var("WASMOP_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(25);
    eprintln!("chaos seed {seed} (WASMOP_CHAOS_SEED)");
    let mut rng = Rng(seed | 1);
    let cluster = Cluster::start("sharding-chaos").await?;
    let names = ["r1", "r2", "r3"];
    let mut replicas = Vec::new();
    for name in names {
        replicas.push(cluster.replica(name, None).await?);
    }
    let teams = cluster.teams(20).await?;
    let keys = Cluster::keys(&teams);
    let parents = cluster.parents(&teams, 120).await?;
    cluster.wait_assigned(&keys, &names).await?;
    cluster.wait_converged(&parents, 0).await?;

    let began = Instant::now();
    let (mut step, mut next_kill, mut kills) = (0, Duration::ZERO, Vec::new());
    while began.elapsed() < Duration::from_secs(120) {
        if began.elapsed() >= next_kill {
            let victim = rng.below(names.len() as u64) as usize;
            let op = &replicas[victim];
            op.note("chaos: kill -9");
            op.stop(StopWith::Kill, Duration::ZERO).await?;
            op.spawn()?;
            kills.push(names[victim]);
            next_kill += Duration::from_secs(20);
        }
        step += 1;
        cluster.set_step(&parents, step).await?;
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    eprintln!("killed in turn: {kills:?}; {step} content steps");

    let settled = Instant::now();
    for op in &replicas {
        op.wait_ready(Duration::from_secs(90)).await?;
    }
    cluster.wait_assigned(&keys, &names).await?;
    let took = cluster.wait_converged(&parents, step).await?;
    eprintln!(
        "after the last kill: all assigned and converged at step {step} {:?} after the chaos ({took:?} for the parents)",
        settled.elapsed()
    );
    let audit = shards::audit(&cluster.audit, &teams)?;
    let moves: usize = audit
        .owners
        .values()
        .map(|o| o.len().saturating_sub(1))
        .sum();
    eprintln!(
        "audit: {moves} moves of {} WasmControllers; handover or last write to take: {:?}",
        audit.owners.len(),
        shards::spread(&audit.gaps)
    );
    if !audit.violations.is_empty() {
        let shown: Vec<String> = audit
            .violations
            .iter()
            .map(|(ns, v)| {
                format!(
                    "{ns}:\n  {}\nits writes:\n  {}",
                    v.join("\n  "),
                    audit.timelines[ns].join("\n  ")
                )
            })
            .collect();
        bail!(
            "writes by a replica that did not run the WasmController:\n{}",
            shown.join("\n")
        );
    }
    Ok(())
}
