//! The Extism plugin host: the only module that names extism or wasmtime.
//!
//! [`Host::load`] compiles a plugin for one controller and reserves that controller's share of
//! the operator-wide [`Budget`]; [`LoadedPlugin::call`] waits for one of the operator-wide call
//! slots, then runs the export on one of the plugin's *lanes*, on the calling thread once tokio
//! has handed that worker's other tasks to another thread (see "Where a call runs").
//!
//! # Guarantees
//! - Limits: linear memory is capped (`memoryMiB`), each call has a wall-clock deadline
//!   (`timeoutMs`) and optionally a fuel budget; an instance's start-up (instantiation, the
//!   module's start function, `_initialize` and other initialisers) may execute at most
//!   `timeoutMs` × [`STARTUP_FUEL_PER_MS`] wasm instructions. No WASI filesystem or network, and
//!   no Extism HTTP (the feature is compiled out).
//! - **A timeout interrupts its own call only**, whether the other calls in flight belong to the
//!   same controller or another one, run the same bytes or not (lanes, below).
//! - **Budget**: a load reserves `memoryMiB` × instances of the operator-wide memory budget or is
//!   refused ([`Error::OverBudget`]); dropping the [`LoadedPlugin`] gives it back. At most
//!   [`Budget::max_calls`] calls run at once, shared fairly between controllers (scheduling,
//!   below).
//! - A reconcile is a pure function of its request: every controller has its own instances
//!   (nothing is shared between two loads, even of identical bytes); an instance whose call
//!   failed in any way is discarded, and healthy instances are recycled after
//!   [`RECYCLE_AFTER_CALLS`] calls so no state leaks between parents for long.
//! - Idle instances give their memory back: an instance idle for [`Budget::idle_after`] is
//!   dropped, and so is the compiled code of every lane but one.
//! - Extism reports failures as untyped errors; they are classified into [`Error`] here, once.
//!
//! Plugin log calls (`extism_pdk::info!`, `console.log`, ...) are emitted as `tracing` events
//! inside the caller's span, so they carry the controller and object fields.
//!
//! # Lanes: why a timeout no longer interrupts its neighbours
//! How Extism 1.41.0 enforces `timeoutMs` (`~/.cargo/registry/src/*/extism-1.41.0/src/`):
//! - `CompiledPlugin::new` creates one wasmtime `Engine` per compiled plugin with
//!   `epoch_interruption(true)` (`plugin.rs:60`, `plugin.rs:78`); every `Plugin` made from it
//!   (`Plugin::new_from_compiled`) is a `Store` on that engine.
//! - Each call (`raw_call`) sends `TimerAction::Start { engine, duration }` to one global timer
//!   thread, then sets `epoch_deadline_trap()` and `set_epoch_deadline(1)` on its store
//!   (`plugin.rs:940-951`): the call traps at the engine's *next* epoch tick.
//! - The timer thread ticks the engine when a call's deadline passes: `engine.increment_epoch()`
//!   (`timer.rs:99-117`); `CancelHandle::cancel` does the same (`timer.rs:74-79`). One tick
//!   traps every store of that engine that is running wasm, i.e. every call in flight on any
//!   instance of the same compiled plugin. That was the bug: the compiled plugin was shared by
//!   all instances of a controller and by every controller loading the same bytes and limits.
//! - The store and engine are `pub(crate)` (`plugin.rs:48`, `plugin.rs:142`) and the deadline is
//!   set inside `raw_call`, so per-store deadlines against a shared ticking engine cannot be set
//!   through Extism's API (and `unsafe` is forbidden here); `PluginBuilder::with_wasmtime_config`
//!   only seeds the `Config` of the engine Extism creates.
//!
//! So each controller's plugin runs on *lanes*: a lane is one `CompiledPlugin`, hence one
//! engine, with at most one instance, running at most one call at a time. An epoch tick on a
//! lane's engine can only ever reach the call that lane is running, which is the call whose
//! deadline passed. A controller has at most `instances` lanes (its concurrency), compiled
//! lazily when its concurrent calls first need them; with the on-disk cache a further lane costs
//! a cache hit (1–11 ms for the example plugins, against 0.1–1.3 s to compile), without it a
//! compile. Compiled code is per lane (not counted in the memory budget), which is why idle lanes
//! beyond the first are dropped.
//!
//! One race remains in Extism's timer: it may tick for a deadline that passed just as the call
//! finished (its expiry check runs before it reads the queued `Stop`), which can interrupt the
//! lane's *next* call within microseconds of its start. A call interrupted before its own
//! deadline cannot be its own timeout, so it is run again once on a fresh instance.
//!
//! # Where a call runs
//! On a multi-thread runtime a call runs on the thread of the task that makes it, inside
//! `tokio::task::block_in_place`: the worker's core (its queue of other tasks) moves to another
//! thread first, so the runtime keeps running and only the calling task waits. This saves the
//! two thread wake-ups of a hop to the blocking pool and back, which measured 40–75 µs per call
//! on a 2-vCPU VM (BENCHMARKS.md, *dispatch*), a quarter of a Rust plugin call; inline, the
//! same step measured ~2 µs. A dedicated thread per lane was tried as well: 80–120 µs against
//! the pool's 35–60 µs in the same runs, so it was dropped. A task is
//! blocked for its call, so callers that run calls concurrently make them from separate tasks:
//! kube-runtime's `Controller::run` spawns every reconcile as a task of its own (aborted when
//! dropped; `kube-runtime-5.0.0/src/controller/mod.rs`, `CancelableJoinHandle::spawn`), so a
//! long call holds up its own parent only, not the controller's other reconciles or watches
//! (`tests/tests/isolation.rs` pins that). On a
//! current-thread runtime (where `block_in_place` is not allowed) a call goes to the blocking
//! pool, as all calls did before. A panic inside a call is caught either way: the call fails
//! with [`Error::Internal`] and its instance is discarded.
//!
//! # Start-up is bounded by fuel
//! Extism instantiates a module, runs its start function and its initialisers (`_initialize`,
//! also from `Linker::module` while linking a reactor) before it starts the call's timer
//! (`plugin.rs:890-894` against `plugin.rs:940`), so the wall-clock timeout never covers
//! start-up. It is bounded instead with `PluginBuilder::with_initialization_fuel_limit`
//! (`timeoutMs` × [`STARTUP_FUEL_PER_MS`] instructions, about a timeout's worth of compute; the
//! Go example needs under 10⁷). Fuel metering is therefore always on (calls of the examples
//! were 5–25% slower); without `spec.plugin.limits.fuel` a call's own fuel is unlimited. Each
//! new instance runs its start-up at once (a call of an export no module has), so a start-up
//! failure is reported as such ([`Error::StartupTimeout`]) and never counts against a call's
//! timeout.
//!
//! # Scheduling
//! [`Budget::max_calls`] slots bound the calls running at once (and so the threads and cores
//! plugins occupy). A controller holds at most `instances` of them. A call waiting for a
//! slot queues in its controller's FIFO queue, and freed slots go **round-robin between
//! controllers** that have a waiting call, so a controller's share under contention does not
//! grow with the number of calls it queues. And **a controller's first slot is kept free for
//! it**: a controller already holding a slot may take another only while more slots stay free
//! than there are other controllers holding none (counting at most half of all slots). So
//! however many calls of other controllers hang until their timeouts, a controller's first call
//! starts at once (unless more than half of the slots go to first calls at the same moment), and
//! its further calls get their turn as slots free up; every waiting call is served, because
//! every running call ends by its timeout. (Except a plugin asleep in WASI `poll_oneoff`, which
//! wasmtime-wasi serves with `std::thread::sleep` (`wasmtime-wasi-49.0.5/src/p1.rs:2333`): epoch
//! interruption only acts in wasm code, so such a call holds its slot until the sleep ends.
//! It holds at most its controller's `instances` slots, and the first-slot rule keeps the
//! other controllers running.)

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use extism::{CompiledPlugin, Manifest, Plugin, PluginBuilder, Wasm};
use tokio::sync::Notify;

use crate::crd::Limits;
use crate::plugin::source::PluginBytes;

/// The `tracing` target of plugin log calls (Extism emits them from its `pdk` module).
pub const PLUGIN_LOG_TARGET: &str = "extism::pdk";

/// A healthy instance is replaced after this many calls.
pub const RECYCLE_AFTER_CALLS: u32 = 256;

/// Wasm instructions an instance's start-up may execute per millisecond of `timeoutMs`.
pub const STARTUP_FUEL_PER_MS: u64 = 1_000_000;

/// An export no module has (export names never contain NUL in practice): calling it makes
/// Extism instantiate and initialise the module, then fail with "Function not found".
const STARTUP_PROBE: &str = "\0wasmop-startup";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "plugin {sha256:.12} failed to compile: {message}. Is it an Extism plugin built for wasm32-unknown-unknown or wasm32-wasip1?"
    )]
    Compile { sha256: String, message: String },
    #[error(
        "plugin does not export `{export}`: export it (e.g. #[plugin_fn] pub fn {export}) or set spec.plugin.finalize: false"
    )]
    MissingExport { export: String },
    #[error(
        "plugin call timed out after {timeout_ms} ms (spec.plugin.limits.timeoutMs): make the plugin faster or raise the limit"
    )]
    Timeout { timeout_ms: u32 },
    #[error(
        "plugin start-up (instantiation and initialisers) did not finish within {fuel} instructions (spec.plugin.limits.timeoutMs = {timeout_ms} × {per_ms}): do less at start-up or raise the limit",
        per_ms = STARTUP_FUEL_PER_MS
    )]
    StartupTimeout { timeout_ms: u32, fuel: u64 },
    #[error(
        "plugin ran out of memory (spec.plugin.limits.memoryMiB = {memory_mib}): allocate less or raise the limit"
    )]
    OutOfMemory { memory_mib: u32 },
    #[error(
        "plugin ran out of fuel (spec.plugin.limits.fuel = {fuel}): do less work per call or raise the limit"
    )]
    OutOfFuel { fuel: u64 },
    #[error(
        "plugin needs {needed_mib} MiB of memory ({instances} instances × spec.plugin.limits.memoryMiB = {memory_mib} MiB; instances = spec.maxConcurrentReconciles, at most --max-concurrent-plugin-calls) but only {available_mib} MiB of the operator's plugin memory budget of {budget_mib} MiB is left: lower memoryMiB or maxConcurrentReconciles, or have the operator's --plugin-memory-budget-mib raised"
    )]
    OverBudget {
        needed_mib: u64,
        memory_mib: u32,
        instances: usize,
        available_mib: u64,
        budget_mib: u64,
    },
    #[error("plugin trapped: {message}")]
    Trap { message: String },
    #[error("plugin exited with WASI exit code {code}")]
    Exit { code: i32 },
    #[error("plugin returned an error: {message}")]
    Failed { message: String },
    #[error("plugin host failure: {message}")]
    Internal { message: String },
}

impl Error {
    /// The `reason` label of `wasmop_plugin_failures_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Compile { .. } => "compile",
            Error::MissingExport { .. } => "missing_export",
            Error::Timeout { .. } => "timeout",
            Error::StartupTimeout { .. } => "startup_timeout",
            Error::OutOfMemory { .. } => "out_of_memory",
            Error::OutOfFuel { .. } => "out_of_fuel",
            Error::OverBudget { .. } => "over_budget",
            Error::Trap { .. } => "trap",
            Error::Exit { .. } => "exit",
            Error::Failed { .. } => "plugin_error",
            Error::Internal { .. } => "internal",
        }
    }

    /// A short UpperCamelCase reason for conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Compile { .. } => "PluginCompileFailed",
            Error::MissingExport { .. } => "PluginMissingExport",
            Error::Timeout { .. } | Error::StartupTimeout { .. } => "PluginTimeout",
            Error::OutOfMemory { .. } => "PluginOutOfMemory",
            Error::OutOfFuel { .. } => "PluginOutOfFuel",
            Error::OverBudget { .. } => "PluginOverBudget",
            Error::Trap { .. } => "PluginTrap",
            Error::Exit { .. } => "PluginExited",
            Error::Failed { .. } => "PluginError",
            Error::Internal { .. } => "PluginHostError",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The operator-wide shares every loaded plugin draws from (`wasmop run` flags).
#[derive(Clone, Debug)]
pub struct Budget {
    /// The sum over loaded plugins of `memoryMiB` × instances may not exceed this
    /// (`--plugin-memory-budget-mib`).
    pub memory_mib: u64,
    /// Plugin calls running at once, all controllers together; also the most instances one
    /// plugin gets (`--max-concurrent-plugin-calls`).
    pub max_calls: usize,
    /// An instance idle this long is dropped, and so is every idle lane but a plugin's last.
    pub idle_after: Duration,
}

impl Budget {
    pub const DEFAULT_MEMORY_MIB: u64 = 4096;
    pub const DEFAULT_IDLE_AFTER: Duration = Duration::from_secs(60);
    /// The most `max_calls` the operator accepts. A running call holds a thread (its own, its
    /// async worker's core having moved to another one: "Where a call runs"), and those threads
    /// come from tokio's blocking pool of 512; at most half of it leaves room for the handed-over
    /// cores and the pool's other users, so the runtime never waits for a thread.
    pub const MAX_CALLS: usize = 256;

    /// Twice the CPUs available to the process (cgroup quotas included), at least 4: wasm calls
    /// are pure computation, so more slots than that only time-slice the same cores.
    pub fn default_max_calls() -> usize {
        std::thread::available_parallelism()
            .map_or(2, std::num::NonZero::get)
            .saturating_mul(2)
            .clamp(4, Self::MAX_CALLS)
    }
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            memory_mib: Self::DEFAULT_MEMORY_MIB,
            max_calls: Self::default_max_calls(),
            idle_after: Self::DEFAULT_IDLE_AFTER,
        }
    }
}

/// Compiles plugins and holds the operator-wide budget and call slots.
#[derive(Clone)]
pub struct Host {
    shared: Arc<Shared>,
    cache_config: Option<PathBuf>,
}

impl Host {
    /// A host with the default [`Budget`]. `cache_dir`: where wasmtime keeps compiled machine
    /// code across operator restarts (None disables the on-disk cache).
    ///
    /// # Errors
    /// The cache directory or its config file cannot be written.
    pub fn new(cache_dir: Option<PathBuf>) -> std::io::Result<Self> {
        Self::with_budget(cache_dir, Budget::default())
    }

    /// A host whose plugins share `budget` (a `max_calls` of 0 counts as 1).
    ///
    /// # Errors
    /// The cache directory or its config file cannot be written, or the thread that drops idle
    /// instances cannot be started.
    pub fn with_budget(cache_dir: Option<PathBuf>, budget: Budget) -> std::io::Result<Self> {
        let cache_config = match cache_dir {
            Some(dir) => {
                let dir = std::path::absolute(dir)?;
                std::fs::create_dir_all(&dir)?;
                let config = dir.join("wasmtime-cache.toml");
                let body = format!(
                    "[cache]\ndirectory = {:?}\n",
                    dir.join("compiled").display().to_string()
                );
                // Written to a unique temporary file and renamed: several processes sharing
                // one cache directory (tests, `wasmop eval` beside the operator) must never
                // read a half-written config.
                let tmp = dir.join(format!(
                    ".wasmtime-cache.toml.{}.{:?}",
                    std::process::id(),
                    std::thread::current().id()
                ));
                std::fs::write(&tmp, body)?;
                std::fs::rename(&tmp, &config)?;
                Some(config)
            }
            None => None,
        };
        let budget = Budget {
            max_calls: budget.max_calls.max(1),
            ..budget
        };
        let every =
            (budget.idle_after / 4).clamp(Duration::from_millis(20), Duration::from_secs(10));
        let shared = Arc::new(Shared {
            slots: Mutex::new(Slots {
                total: budget.max_calls,
                free: budget.max_calls,
                ..Slots::default()
            }),
            budget,
            reserved_mib: Mutex::new(0),
            plugins: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
        });
        let weak = Arc::downgrade(&shared);
        // Ends once the host and all its plugins are gone.
        std::thread::Builder::new()
            .name("wasmop-plugin-idle".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(every);
                    match weak.upgrade() {
                        Some(shared) => shared.drop_idle(),
                        None => return,
                    }
                }
            })?;
        Ok(Host {
            shared,
            cache_config,
        })
    }

    /// The budget this host enforces.
    pub fn budget(&self) -> &Budget {
        &self.shared.budget
    }

    /// MiB of the memory budget reserved by the plugins loaded now.
    pub fn memory_reserved_mib(&self) -> u64 {
        *lock(&self.shared.reserved_mib)
    }

    /// Plugin calls running now (slots taken).
    pub fn calls_running(&self) -> usize {
        let slots = lock(&self.shared.slots);
        slots.total - slots.free
    }

    /// Compiles the plugin for one controller that runs up to `concurrency` calls at once,
    /// reserving `memoryMiB` × `min(concurrency, max_calls)` of the memory budget until the
    /// returned plugin is dropped. Compiling happens off the async threads; the first instance is
    /// started up front, so a broken module (bad imports, a failing or endless start-up) fails
    /// the load, not the first reconcile.
    ///
    /// # Errors
    /// [`Error::OverBudget`] when the reservation does not fit, [`Error::Compile`] when the bytes
    /// are not a loadable Extism plugin, a start-up failure of the first instance.
    pub async fn load(
        &self,
        bytes: &PluginBytes,
        limits: &Limits,
        concurrency: usize,
    ) -> Result<Arc<LoadedPlugin>> {
        self.load_replacing(bytes, limits, concurrency, None).await
    }

    /// [`Host::load`] for a plugin about to replace `replaces` (a hot reload): the memory
    /// `replaces` holds counts as available, since it comes back when `replaces` is dropped.
    /// Until then the budget may be exceeded by that much.
    ///
    /// # Errors
    /// As [`Host::load`].
    pub async fn load_replacing(
        &self,
        bytes: &PluginBytes,
        limits: &Limits,
        concurrency: usize,
        replaces: Option<&LoadedPlugin>,
    ) -> Result<Arc<LoadedPlugin>> {
        let instances = concurrency.clamp(1, self.shared.budget.max_calls);
        let memory_mib = limits.memory_mib();
        let needed_mib = u64::from(memory_mib).saturating_mul(instances as u64);
        let credit = replaces
            .filter(|p| Arc::ptr_eq(&p.share.shared, &self.shared))
            .map_or(0, |p| p.share.mib);
        let share = Share::reserve(&self.shared, needed_mib, credit, instances).map_err(
            |available_mib| Error::OverBudget {
                needed_mib,
                memory_mib,
                instances,
                available_mib,
                budget_mib: self.shared.budget.memory_mib,
            },
        )?;
        let (wasm, sha256, limits2, cache) = (
            bytes.wasm.clone(),
            bytes.sha256.clone(),
            limits.clone(),
            self.cache_config.clone(),
        );
        let started = Instant::now();
        let (lane, exports) = tokio::task::spawn_blocking(move || {
            let compiled = compile(&wasm, &sha256, &limits2, cache.as_deref())?;
            let instance = start_instance(&compiled, &sha256, &limits2)?;
            let exports = export_names(&wasm)
                .into_iter()
                .filter(|name| instance.plugin.function_exists(name))
                .collect::<HashSet<_>>();
            let lane = Lane {
                compiled,
                instance: Some(instance),
                idle_since: Instant::now(),
            };
            Ok::<_, Error>((lane, exports))
        })
        .await
        .map_err(|e| Error::Internal {
            message: e.to_string(),
        })??;
        tracing::info!(sha256 = %bytes.sha256, elapsed_ms = started.elapsed().as_millis() as u64, instances, reserved_mib = needed_mib, "plugin compiled");
        let loaded = Arc::new(LoadedPlugin {
            sha256: bytes.sha256.clone(),
            size_bytes: bytes.wasm.len() as u64,
            limits: limits.clone(),
            wasm: bytes.wasm.clone(),
            cache_config: self.cache_config.clone(),
            exports,
            lanes: Arc::new(Mutex::new(Lanes {
                idle: vec![lane],
                total: 1,
            })),
            reruns: AtomicU64::new(0),
            share,
        });
        lock(&self.shared.plugins).push(Arc::downgrade(&loaded.lanes));
        Ok(loaded)
    }
}

/// What a host's plugins share.
struct Shared {
    budget: Budget,
    reserved_mib: Mutex<u64>,
    slots: Mutex<Slots>,
    /// The lanes of every plugin loaded, for dropping idle instances (not the plugins
    /// themselves, whose drop gives their reservation back at once).
    plugins: Mutex<Vec<Weak<Mutex<Lanes>>>>,
    next_id: AtomicU64,
}

impl Shared {
    fn drop_idle(&self) {
        let plugins: Vec<Arc<Mutex<Lanes>>> = {
            let mut list = lock(&self.plugins);
            list.retain(|p| p.strong_count() > 0);
            list.iter().filter_map(Weak::upgrade).collect()
        };
        for lanes in &plugins {
            drop_idle(lanes, self.budget.idle_after);
        }
    }
}

/// One loaded plugin's reservation: memory from the budget and a place in the call scheduler.
/// Dropping it gives both back.
struct Share {
    shared: Arc<Shared>,
    id: u64,
    mib: u64,
    instances: usize,
}

impl Share {
    /// Reserves `mib` (treating `credit` MiB already reserved as free), or returns the MiB
    /// available.
    fn reserve(shared: &Arc<Shared>, mib: u64, credit: u64, instances: usize) -> Result<Self, u64> {
        {
            let mut reserved = lock(&shared.reserved_mib);
            let available = shared
                .budget
                .memory_mib
                .saturating_sub(reserved.saturating_sub(credit));
            if mib > available {
                return Err(available);
            }
            *reserved += mib;
        }
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&shared.slots).register(id, instances);
        Ok(Share {
            shared: shared.clone(),
            id,
            mib,
            instances,
        })
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        {
            let mut reserved = lock(&self.shared.reserved_mib);
            *reserved = reserved.saturating_sub(self.mib);
        }
        lock(&self.shared.slots).unregister(self.id);
    }
}

/// The call slots and who waits for them (see the module docs, "Scheduling").
#[derive(Default)]
struct Slots {
    total: usize,
    free: usize,
    users: HashMap<u64, User>,
    /// Users with a waiting call, in turn order.
    turns: VecDeque<u64>,
    /// Users holding no slot.
    holding_none: usize,
}

struct User {
    held: usize,
    limit: usize,
    waiting: VecDeque<Arc<Waiter>>,
}

#[derive(Default)]
struct Waiter {
    /// Set, under the [`Slots`] lock, when a slot is handed to this waiter.
    granted: AtomicBool,
    wake: Notify,
}

impl Slots {
    fn register(&mut self, id: u64, limit: usize) {
        self.users.insert(
            id,
            User {
                held: 0,
                limit: limit.max(1),
                waiting: VecDeque::new(),
            },
        );
        self.holding_none += 1;
    }

    fn unregister(&mut self, id: u64) {
        if let Some(user) = self.users.remove(&id)
            && user.held == 0
        {
            self.holding_none -= 1;
        }
        self.turns.retain(|u| *u != id);
        // Fewer first slots to keep free: others may take them.
        self.dispatch();
    }

    /// Whether `user` may take a slot now.
    fn may_take(&self, user: &User) -> bool {
        let kept_free = self.holding_none.min(self.total / 2);
        user.held < user.limit && self.free > 0 && (user.held == 0 || self.free > kept_free)
    }

    fn take(&mut self, id: u64) {
        if let Some(user) = self.users.get_mut(&id) {
            if user.held == 0 {
                self.holding_none -= 1;
            }
            user.held += 1;
            self.free -= 1;
        }
    }

    fn give_back(&mut self, id: u64) {
        self.free += 1;
        if let Some(user) = self.users.get_mut(&id) {
            user.held -= 1;
            if user.held == 0 {
                self.holding_none += 1;
            }
        }
        self.dispatch();
    }

    /// Hands free slots to waiting calls, one per user in turn, until none can take one.
    fn dispatch(&mut self) {
        loop {
            let mut granted = false;
            for _ in 0..self.turns.len() {
                if self.free == 0 {
                    return;
                }
                let Some(id) = self.turns.pop_front() else {
                    return;
                };
                let Some(user) = self.users.get(&id) else {
                    continue;
                };
                if user.waiting.is_empty() {
                    continue;
                }
                if self.may_take(user) {
                    self.take(id);
                    let user = self.users.get_mut(&id).expect("looked up above");
                    let waiter = user.waiting.pop_front().expect("not empty");
                    waiter.granted.store(true, Ordering::Release);
                    waiter.wake.notify_one();
                    granted = true;
                }
                if self.users.get(&id).is_some_and(|u| !u.waiting.is_empty()) {
                    self.turns.push_back(id);
                }
            }
            if !granted {
                return;
            }
        }
    }
}

/// A call slot; given back on drop.
struct Slot {
    shared: Arc<Shared>,
    user: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.shared.slots).give_back(self.user);
    }
}

/// A call waiting for a slot; leaves the queue (or gives back a slot granted meanwhile) when
/// the waiting future is dropped.
struct Queued<'a> {
    shared: &'a Arc<Shared>,
    user: u64,
    waiter: Option<Arc<Waiter>>,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        let Some(waiter) = self.waiter.take() else {
            return;
        };
        let mut slots = lock(&self.shared.slots);
        if waiter.granted.load(Ordering::Acquire) {
            slots.give_back(self.user);
        } else if let Some(user) = slots.users.get_mut(&self.user) {
            user.waiting.retain(|w| !Arc::ptr_eq(w, &waiter));
            if user.waiting.is_empty() {
                slots.turns.retain(|u| *u != self.user);
            }
        }
    }
}

impl Shared {
    /// Waits for a call slot for `user` (FIFO per user, round-robin between users).
    async fn acquire(self: &Arc<Self>, user: u64) -> Slot {
        let waiter = {
            let mut slots = lock(&self.slots);
            let Some(u) = slots.users.get(&user) else {
                unreachable!("a loaded plugin is registered until it is dropped");
            };
            if u.waiting.is_empty() && slots.may_take(u) {
                slots.take(user);
                return Slot {
                    shared: self.clone(),
                    user,
                };
            }
            let waiter = Arc::new(Waiter::default());
            let u = slots.users.get_mut(&user).expect("looked up above");
            let first = u.waiting.is_empty();
            u.waiting.push_back(waiter.clone());
            if first {
                slots.turns.push_back(user);
            }
            waiter
        };
        let mut queued = Queued {
            shared: self,
            user,
            waiter: Some(waiter.clone()),
        };
        // `notify_one` stores a wake-up when nobody waits yet, so none is lost.
        while !waiter.granted.load(Ordering::Acquire) {
            waiter.wake.notified().await;
        }
        queued.waiter = None;
        Slot {
            shared: self.clone(),
            user,
        }
    }
}

fn compile(
    wasm: &[u8],
    sha256: &str,
    limits: &Limits,
    cache: Option<&Path>,
) -> Result<CompiledPlugin> {
    let manifest = Manifest::new([Wasm::data(wasm.to_vec())])
        .with_memory_max(limits.memory_mib().saturating_mul(16)) // 64 KiB pages
        .with_timeout(Duration::from_millis(limits.timeout_ms().into()))
        .disallow_all_hosts();
    // Fuel metering is on for every plugin so start-up can be bounded; a call's own fuel is
    // unlimited unless the controller sets one.
    let mut builder = PluginBuilder::new(manifest)
        .with_wasi(true)
        .with_fuel_limit(limits.fuel.unwrap_or(u64::MAX))
        .with_initialization_fuel_limit(startup_fuel(limits));
    builder = match cache {
        Some(config) => builder.with_cache_config(config),
        None => builder.with_cache_disabled(),
    };
    CompiledPlugin::new(builder).map_err(|e| Error::Compile {
        sha256: sha256.into(),
        message: format!("{e:#}"),
    })
}

fn startup_fuel(limits: &Limits) -> u64 {
    u64::from(limits.timeout_ms()).saturating_mul(STARTUP_FUEL_PER_MS)
}

/// A new instance, started up (instantiated and initialised), within the start-up fuel.
fn start_instance(compiled: &CompiledPlugin, sha256: &str, limits: &Limits) -> Result<Instance> {
    let startup_timeout = || Error::StartupTimeout {
        timeout_ms: limits.timeout_ms(),
        fuel: startup_fuel(limits),
    };
    // Links the module; a reactor's `_initialize` already runs here.
    let mut plugin = Plugin::new_from_compiled(compiled).map_err(|e| {
        if out_of_fuel(&e) {
            startup_timeout()
        } else {
            Error::Compile {
                sha256: sha256.into(),
                message: format!("{e:#}"),
            }
        }
    })?;
    match plugin.call_get_error_code::<&[u8], Vec<u8>>(STARTUP_PROBE, &[]) {
        Ok(_) => {}
        Err((e, _)) if e.to_string() == format!("Function not found: {STARTUP_PROBE}") => {}
        Err((e, _)) if out_of_fuel(&e) => return Err(startup_timeout()),
        Err((e, code)) => return Err(classify(limits, e, code)),
    }
    Ok(Instance { plugin, calls: 0 })
}

fn out_of_fuel(err: &extism::Error) -> bool {
    err.chain().any(|c| {
        matches!(
            c.downcast_ref::<wasmtime::Trap>(),
            Some(wasmtime::Trap::OutOfFuel)
        ) || c.to_string() == "plugin ran out of fuel"
    })
}

/// The names of the functions a module exports (Extism then checks their signatures).
fn export_names(wasm: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        match payload {
            Ok(wasmparser::Payload::ExportSection(exports)) => {
                names.extend(
                    exports
                        .into_iter()
                        .flatten()
                        .filter(|e| e.kind == wasmparser::ExternalKind::Func)
                        .map(|e| e.name.to_string()),
                );
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    names
}

/// A compiled plugin for one controller: its lanes and their instances.
pub struct LoadedPlugin {
    pub sha256: String,
    pub size_bytes: u64,
    pub limits: Limits,
    wasm: Arc<[u8]>,
    cache_config: Option<PathBuf>,
    /// The exports Extism can call.
    exports: HashSet<String>,
    lanes: Arc<Mutex<Lanes>>,
    /// Calls interrupted before their deadline and run again.
    reruns: AtomicU64,
    share: Share,
}

/// A plugin's lanes: the idle ones (least recently used first) and how many exist.
struct Lanes {
    idle: Vec<Lane>,
    total: usize,
}

/// One engine (so its epoch ticks reach only this lane's call), at most one instance, one call
/// at a time.
struct Lane {
    compiled: CompiledPlugin,
    instance: Option<Instance>,
    idle_since: Instant,
}

struct Instance {
    plugin: Plugin,
    calls: u32,
}

/// The result of one call.
#[derive(Debug)]
pub struct CallOutput {
    pub output: Vec<u8>,
    /// Time in the plugin (start-up of a new instance excluded).
    pub elapsed: Duration,
    /// Time spent waiting for a call slot.
    pub waited: Duration,
}

/// A lane taken for one call; back to the idle lanes on drop.
struct TakenLane<'a> {
    plugin: &'a LoadedPlugin,
    lane: Option<Lane>,
}

impl Drop for TakenLane<'_> {
    fn drop(&mut self) {
        if let Some(mut lane) = self.lane.take() {
            if std::thread::panicking() {
                lane.instance = None;
            }
            lane.idle_since = Instant::now();
            lock(&self.plugin.lanes).idle.push(lane);
        }
    }
}

impl LoadedPlugin {
    /// Whether the plugin exports `name` as a function Extism can call.
    ///
    /// # Errors
    /// None today (kept for callers that propagate it).
    pub fn has_export(&self, name: &str) -> Result<bool> {
        Ok(self.exports.contains(name))
    }

    /// The most instances (lanes) this plugin runs at once.
    pub fn instances(&self) -> usize {
        self.share.instances
    }

    /// MiB of the host's memory budget this plugin holds.
    pub fn reserved_mib(&self) -> u64 {
        self.share.mib
    }

    /// Idle lanes holding a started instance (memory in use while nothing runs).
    pub fn warm_instances(&self) -> usize {
        let lanes = lock(&self.lanes);
        lanes.idle.iter().filter(|l| l.instance.is_some()).count()
    }

    /// Calls that were interrupted before their own deadline and run again (see the module
    /// docs: only Extism's timer race can cause it).
    pub fn reruns(&self) -> u64 {
        self.reruns.load(Ordering::Relaxed)
    }

    /// Lanes compiled now (each holds its own copy of the machine code).
    pub fn lanes(&self) -> usize {
        lock(&self.lanes).total
    }

    /// Calls `export` with `input` once a call slot is free, on one of this plugin's lanes, on
    /// the calling thread (module docs, "Where a call runs"): it blocks the calling task, not the
    /// runtime, so concurrent calls are made from separate tasks. Plugin logs are emitted inside
    /// the current tracing span.
    ///
    /// # Errors
    /// Every failure of the call, classified; the instance is then discarded. A panic inside
    /// the call is [`Error::Internal`].
    pub async fn call(self: &Arc<Self>, export: &str, input: Vec<u8>) -> Result<CallOutput> {
        if !self.exports.contains(export) {
            return Err(Error::MissingExport {
                export: export.into(),
            });
        }
        let queued = Instant::now();
        let slot = self.share.shared.acquire(self.share.id).await;
        let waited = queued.elapsed();
        let mut output = if on_a_multi_thread_runtime() {
            tokio::task::block_in_place(|| {
                let _slot = slot;
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.call_on_a_lane(export, &input)
                }))
                .unwrap_or_else(|panic| {
                    Err(Error::Internal {
                        message: format!("plugin call panicked: {}", panic_text(panic.as_ref())),
                    })
                })
            })?
        } else {
            // Dropping this future while the call runs lets the call finish (within its
            // timeout) and holds its slot until then.
            let this = self.clone();
            let export = export.to_string();
            let span = tracing::Span::current();
            tokio::task::spawn_blocking(move || {
                let _slot = slot;
                span.in_scope(|| this.call_on_a_lane(&export, &input))
            })
            .await
            .map_err(|e| Error::Internal {
                message: format!("plugin call panicked: {e}"),
            })??
        };
        output.waited = waited;
        Ok(output)
    }

    fn call_on_a_lane(&self, export: &str, input: &[u8]) -> Result<CallOutput> {
        let mut taken = self.take_lane()?;
        let lane = taken.lane.as_mut().expect("taken");
        let timeout = Duration::from_millis(self.limits.timeout_ms().into());
        let mut retried = false;
        loop {
            let mut instance = match lane.instance.take() {
                Some(instance) => instance,
                None => start_instance(&lane.compiled, &self.sha256, &self.limits)?,
            };
            let started = Instant::now();
            let result = instance
                .plugin
                .call_get_error_code::<&[u8], Vec<u8>>(export, input);
            let elapsed = started.elapsed();
            match result {
                Ok(output) => {
                    instance.calls += 1;
                    if instance.calls < RECYCLE_AFTER_CALLS {
                        lane.instance = Some(instance);
                    }
                    return Ok(CallOutput {
                        output,
                        elapsed,
                        waited: Duration::ZERO,
                    });
                }
                // The instance is dropped here: after any failure its state is suspect.
                Err((err, code)) => {
                    let error = classify(&self.limits, err, code);
                    if matches!(error, Error::Timeout { .. }) && elapsed < timeout && !retried {
                        // A tick meant for the lane's previous call (module docs): run again.
                        tracing::debug!(
                            elapsed_ms = elapsed.as_millis() as u64,
                            "plugin call interrupted before its deadline; retrying once"
                        );
                        retried = true;
                        self.reruns.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    return Err(error);
                }
            }
        }
    }

    /// The most recently used idle lane, or a new one (compiled now).
    fn take_lane(&self) -> Result<TakenLane<'_>> {
        {
            let mut lanes = lock(&self.lanes);
            if let Some(lane) = lanes.idle.pop() {
                return Ok(TakenLane {
                    plugin: self,
                    lane: Some(lane),
                });
            }
            lanes.total += 1;
        }
        let started = Instant::now();
        match compile(
            &self.wasm,
            &self.sha256,
            &self.limits,
            self.cache_config.as_deref(),
        ) {
            Ok(compiled) => {
                tracing::debug!(sha256 = %self.sha256, elapsed_ms = started.elapsed().as_millis() as u64, "plugin lane compiled");
                Ok(TakenLane {
                    plugin: self,
                    lane: Some(Lane {
                        compiled,
                        instance: None,
                        idle_since: Instant::now(),
                    }),
                })
            }
            Err(e) => {
                lock(&self.lanes).total -= 1;
                Err(e)
            }
        }
    }
}

/// Drops instances idle for `after`, and whole lanes too while another lane remains.
fn drop_idle(lanes: &Mutex<Lanes>, after: Duration) {
    let mut dropped_lanes = Vec::new();
    let mut dropped_instances = Vec::new();
    {
        let mut lanes = lock(lanes);
        let now = Instant::now();
        let mut i = 0;
        while i < lanes.idle.len() {
            if now.duration_since(lanes.idle[i].idle_since) < after {
                i += 1;
            } else if lanes.total > 1 {
                dropped_lanes.push(lanes.idle.remove(i));
                lanes.total -= 1;
            } else {
                dropped_instances.extend(lanes.idle[i].instance.take());
                i += 1;
            }
        }
    }
    // Memory is unmapped outside the lock.
    drop(dropped_lanes);
    drop(dropped_instances);
}

/// The one place Extism's untyped errors become [`Error`] variants.
fn classify(limits: &Limits, err: extism::Error, code: i32) -> Error {
    if let Some(trap) = err.downcast_ref::<wasmtime::Trap>() {
        return match trap {
            wasmtime::Trap::Interrupt => Error::Timeout {
                timeout_ms: limits.timeout_ms(),
            },
            wasmtime::Trap::OutOfFuel => Error::OutOfFuel {
                fuel: limits.fuel.unwrap_or(0),
            },
            _ => Error::Trap {
                message: format!("{err:#}"),
            },
        };
    }
    if err.downcast_ref::<wasmtime_wasi::I32Exit>().is_some() {
        return Error::Exit { code };
    }
    // Extism reports its own limits with these exact messages (plugin.rs `raw_call`).
    match err.to_string().as_str() {
        "timeout" => Error::Timeout {
            timeout_ms: limits.timeout_ms(),
        },
        "oom" => Error::OutOfMemory {
            memory_mib: limits.memory_mib(),
        },
        "plugin ran out of fuel" => Error::OutOfFuel {
            fuel: limits.fuel.unwrap_or(0),
        },
        _ if err
            .chain()
            .any(|c| c.downcast_ref::<wasmtime::Trap>().is_some()) =>
        {
            Error::Trap {
                message: format!("{err:#}"),
            }
        }
        message => Error::Failed {
            message: message.to_string(),
        },
    }
}

/// Whether this thread runs a task of a multi-thread tokio runtime (where `block_in_place` may
/// hand the worker's other tasks to another thread).
fn on_a_multi_thread_runtime() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// The message of a caught panic.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Locks `m`, ignoring poisoning (every critical section here leaves consistent state).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(total: usize, users: &[(u64, usize)]) -> Slots {
        let mut slots = Slots {
            total,
            free: total,
            ..Slots::default()
        };
        for &(id, limit) in users {
            slots.register(id, limit);
        }
        slots
    }

    fn take_all(slots: &mut Slots, id: u64) -> usize {
        let mut n = 0;
        while slots.may_take(&slots.users[&id]) {
            slots.take(id);
            n += 1;
        }
        n
    }

    fn wait(slots: &mut Slots, id: u64) -> Arc<Waiter> {
        let w = Arc::new(Waiter::default());
        let user = slots.users.get_mut(&id).unwrap();
        if user.waiting.is_empty() {
            slots.turns.push_back(id);
        }
        user.waiting.push_back(w.clone());
        w
    }

    #[test]
    fn a_controller_cannot_take_the_first_slot_of_another() {
        let mut s = slots(4, &[(1, 8), (2, 8), (3, 8)]);
        // Two others hold nothing: two slots stay free for them.
        assert_eq!(take_all(&mut s, 1), 2);
        assert_eq!(take_all(&mut s, 2), 1, "its first slot, not more");
        assert_eq!(take_all(&mut s, 3), 1);
        // Once 3 gives its slot back it is kept for 3 again.
        s.give_back(3);
        assert_eq!(take_all(&mut s, 1), 0);
        // At most half the slots are held back, however many controllers hold none.
        let mut s = slots(4, &[(1, 8), (2, 8), (3, 8), (4, 8), (5, 8)]);
        assert_eq!(take_all(&mut s, 1), 2);
    }

    #[test]
    fn freed_slots_go_round_robin_between_controllers_up_to_their_limits() {
        let mut s = slots(3, &[(1, 2), (2, 3)]);
        s.take(1);
        s.take(2);
        assert_eq!(take_all(&mut s, 1), 1, "up to its limit of 2");
        // Controller 1 queues three calls, then controller 2 one.
        let a: Vec<_> = (0..3).map(|_| wait(&mut s, 1)).collect();
        let b = wait(&mut s, 2);
        let granted = |w: &Arc<Waiter>| w.granted.load(Ordering::Acquire);
        s.give_back(1);
        assert!(granted(&a[0]) && !granted(&b));
        s.give_back(1);
        assert!(granted(&b), "2's turn, though 1 queued first and more");
        assert!(!granted(&a[1]));
        s.give_back(2);
        assert!(granted(&a[1]) && !granted(&a[2]));
        // 1 holds two slots, its limit: a freed slot stays free rather than exceed it.
        s.give_back(2);
        assert!(!granted(&a[2]));
        assert_eq!(s.free, 1);
        s.give_back(1);
        assert!(granted(&a[2]));
        assert!(s.turns.is_empty());
    }

    #[test]
    fn an_unloaded_controller_frees_what_it_held() {
        let mut s = slots(2, &[(1, 2), (2, 2)]);
        assert_eq!(take_all(&mut s, 1), 1);
        s.unregister(2);
        // Nobody else holds none: 1 may take the last slot now.
        assert_eq!(take_all(&mut s, 1), 1);
        s.give_back(1);
        s.give_back(1);
        assert_eq!((s.free, s.holding_none), (2, 1));
    }
}
