//! Field conflicts between controllers, reported on both sides.
//!
//! Status and `apply` patches go to shared objects without force, so when two controllers
//! write one field with different values the API server refuses the second writer with a
//! conflict naming the first writer's field manager. The second writer fails its reconcile
//! (`FieldConflict`, the usual failure path). The first writer's writes keep succeeding, so
//! without this board it would never learn that another controller is fighting over its
//! field. The board tells it: a `Contested` condition on its WasmController and a Warning
//! Event (from it) on the contested object, both naming the other controller and the fields.
//! An entry lasts while the other controller's reconciles of that parent keep failing: it is
//! withdrawn when one succeeds, when the parent is gone, or when that controller stops.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};
use tokio::sync::mpsc;

use crate::reconcile::plan::{Identity, ObjRef};

/// One controller's writes refused because they contest fields another controller owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contest {
    /// The contesting controller, `<namespace>/<name>`.
    pub by: String,
    /// Its parent whose reconcile was refused.
    pub parent: String,
    /// The contested object.
    pub target: ObjRef,
    /// The contested fields (the API server's JSON paths), or empty when it named none.
    pub fields: Vec<String>,
}

impl std::fmt::Display for Contest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fields = if self.fields.is_empty() {
            "fields".to_string()
        } else {
            self.fields.join(", ")
        };
        write!(
            f,
            "WasmController {} tries to write {fields} of {}, which this controller owns; its writes are refused (not forced) until one of you stops writing them",
            self.by, self.target
        )
    }
}

struct Registration {
    token: u64,
    /// The controller's namespace: only a contest over an object there is about it.
    namespace: String,
    health: mpsc::UnboundedSender<()>,
    recorder: Recorder,
}

#[derive(Default)]
struct Inner {
    next_token: u64,
    /// Running controllers by controller id (the field manager's `<namespace>.<name>`).
    controllers: HashMap<String, Registration>,
    /// Contests against a controller id, keyed by (contesting controller, its parent, target).
    against: HashMap<String, BTreeMap<(String, String, String), Contest>>,
}

/// Operator-wide: which controller contests which other's fields.
#[derive(Default)]
pub struct Board {
    inner: Mutex<Inner>,
}

/// What [`Board::register`] returns, for [`Board::unregister`].
#[derive(Clone, Copy, Debug)]
pub struct Token(u64);

impl Board {
    /// A running controller: told through `health` when its contests change; its Events on
    /// contested objects are recorded with `recorder` (as its own account).
    pub fn register(
        &self,
        namespace: &str,
        identity: &Identity,
        health: mpsc::UnboundedSender<()>,
        recorder: Recorder,
    ) -> Token {
        let mut inner = self.inner.lock().unwrap();
        inner.next_token += 1;
        let token = inner.next_token;
        let id = controller_id(identity);
        inner.controllers.insert(
            id,
            Registration {
                token,
                namespace: namespace.into(),
                health,
                recorder,
            },
        );
        Token(token)
    }

    /// A controller stopped: its registration (unless a newer one replaced it) and every
    /// contest it made go.
    pub fn unregister(&self, identity: &Identity, by: &str, token: Token) {
        let id = controller_id(identity);
        {
            let mut inner = self.inner.lock().unwrap();
            if inner
                .controllers
                .get(&id)
                .is_some_and(|r| r.token == token.0)
            {
                inner.controllers.remove(&id);
            }
        }
        self.withdraw(by, None);
    }

    /// Controller `by` was refused writing `target` for its `parent` with the API server's
    /// conflict `message`. Every wasmop controller the message names is told, once per
    /// (controller, parent, target): an Event from it on `target`, and its status refreshed.
    pub async fn report(
        &self,
        by: &str,
        own: &Identity,
        parent: &str,
        target: &ObjRef,
        message: &str,
    ) {
        let fields = conflicting_fields(message);
        let mut notify = Vec::new();
        {
            let mut inner = self.inner.lock().unwrap();
            for manager in conflicting_managers(message) {
                let Some(id) = Identity::of_manager(&manager) else {
                    continue; // not a wasmop controller: only the refused side reports it
                };
                if id == controller_id(own) {
                    continue;
                }
                let id = id.to_string();
                // Only a running controller of the contested object's namespace: anyone may
                // write with a field manager named like another team's controller, and that
                // must not put a contest on that team's status.
                if inner
                    .controllers
                    .get(&id)
                    .is_none_or(|r| r.namespace != target.namespace)
                {
                    continue;
                }
                let contest = Contest {
                    by: by.into(),
                    parent: parent.into(),
                    target: target.clone(),
                    fields: fields.clone(),
                };
                let key = (by.to_string(), parent.to_string(), target.to_string());
                let new = inner
                    .against
                    .entry(id.clone())
                    .or_default()
                    .insert(key, contest.clone())
                    .as_ref()
                    != Some(&contest);
                if let (true, Some(r)) = (new, inner.controllers.get(&id)) {
                    let _ = r.health.send(());
                    notify.push((r.recorder.clone(), contest));
                }
            }
        }
        for (recorder, contest) in notify {
            let event = Event {
                type_: EventType::Warning,
                reason: "FieldConflict".into(),
                note: Some(crate::cluster::api_error::truncate(
                    &contest.to_string(),
                    1024,
                )),
                action: "Reconcile".into(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&event, &reference(&contest.target)).await {
                tracing::debug!(error = %e, "could not record a FieldConflict event");
            }
        }
    }

    /// Controller `by` no longer contests anything for `parent` (every parent when None).
    pub fn withdraw(&self, by: &str, parent: Option<&str>) {
        let mut inner = self.inner.lock().unwrap();
        let Inner {
            controllers,
            against,
            ..
        } = &mut *inner;
        for (id, contests) in against.iter_mut() {
            let before = contests.len();
            contests.retain(|(b, p, _), _| b != by || parent.is_some_and(|parent| parent != p));
            if contests.len() != before
                && let Some(r) = controllers.get(id)
            {
                let _ = r.health.send(());
            }
        }
        against.retain(|_, contests| !contests.is_empty());
    }

    /// The contests against a controller, in a stable order.
    pub fn against(&self, identity: &Identity) -> Vec<Contest> {
        let inner = self.inner.lock().unwrap();
        inner
            .against
            .get(&controller_id(identity))
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default()
    }
}

fn controller_id(identity: &Identity) -> String {
    Identity::of_manager(&identity.field_manager)
        .unwrap_or(&identity.field_manager)
        .to_string()
}

fn reference(target: &ObjRef) -> ObjectReference {
    ObjectReference {
        api_version: Some(target.api_version.clone()),
        kind: Some(target.kind.clone()),
        name: Some(target.name.clone()),
        namespace: Some(target.namespace.clone()),
        ..ObjectReference::default()
    }
}

/// The field managers a server-side apply conflict names: `conflict with "m" using v1: .a`
/// or, for several, `conflicts with "m" using v1:\n- .a\n- .b`.
pub fn conflicting_managers(message: &str) -> Vec<String> {
    let mut managers = Vec::new();
    for part in message.split("with \"").skip(1) {
        if let Some((manager, _)) = part.split_once('"')
            && !managers.iter().any(|m| m == manager)
        {
            managers.push(manager.to_string());
        }
    }
    managers
}

/// The fields a conflict message names (`.status.phase`), in order, without repeats.
pub fn conflicting_fields(message: &str) -> Vec<String> {
    let mut fields = Vec::new();
    for word in message.split(|c: char| c.is_whitespace() || c == ',') {
        let word = word.trim_start_matches('-');
        if word.starts_with('.') && word.len() > 1 && !fields.iter().any(|f| f == word) {
            fields.push(word.to_string());
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    // The API server's wording (k8s.io/apimachinery managedfields conflict.go).
    const ONE: &str = r#"Apply failed with 1 conflict: conflict with "wasmop.dev/team-a.first" using example.com/v1: .status.phase"#;
    const MANY: &str = "Apply failed with 3 conflicts: conflicts with \"wasmop.dev/team-a.first-patch\" using v1:\n- .data.a\n- .data.b\nconflict with \"kubectl\" using v1: .data.c";

    #[test]
    fn managers_and_fields_are_read_from_the_api_servers_conflict_message() {
        assert_eq!(conflicting_managers(ONE), ["wasmop.dev/team-a.first"]);
        assert_eq!(conflicting_fields(ONE), [".status.phase"]);
        assert_eq!(
            conflicting_managers(MANY),
            ["wasmop.dev/team-a.first-patch", "kubectl"]
        );
        assert_eq!(conflicting_fields(MANY), [".data.a", ".data.b", ".data.c"]);
    }

    fn config_map(namespace: &str) -> ObjRef {
        ObjRef {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: namespace.into(),
            name: "shared".into(),
        }
    }

    /// A recorder whose Events go nowhere (nothing listens on port 9).
    fn recorder() -> Recorder {
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let reporter = kube::runtime::events::Reporter {
            controller: "test".into(),
            instance: None,
        };
        Recorder::new(client, reporter)
    }

    /// Team B writes an object of its own with a field manager named like team A's
    /// controller; its controller is then refused with a conflict naming that manager. That
    /// must not show up on team A's controller, nor on one that is not running.
    #[tokio::test]
    async fn a_conflict_in_another_namespace_never_reaches_a_controller() {
        let board = Board::default();
        let victim = Identity::new("team-a", "first");
        let (health, mut told) = mpsc::unbounded_channel();
        board.register("team-a", &victim, health, recorder());
        let spoofed = r#"Apply failed with 1 conflict: conflict with "wasmop.dev/team-a.first" using v1: .data.a"#;
        let b = Identity::new("team-b", "ctl");
        board
            .report("team-b/ctl", &b, "p", &config_map("team-b"), spoofed)
            .await;
        assert!(board.against(&victim).is_empty());
        assert!(
            told.try_recv().is_err(),
            "team A's status is not even refreshed"
        );
        let absent = r#"Apply failed with 1 conflict: conflict with "wasmop.dev/team-a.gone" using v1: .data.a"#;
        let a = Identity::new("team-a", "ctl");
        board
            .report("team-a/ctl", &a, "p", &config_map("team-a"), absent)
            .await;
        assert!(board.against(&Identity::new("team-a", "gone")).is_empty());
    }

    #[tokio::test]
    async fn a_contest_is_held_against_the_named_controller_until_withdrawn() {
        let board = Board::default();
        let first = Identity::new("team-a", "first");
        let second = Identity::new("team-a", "second");
        let target = config_map("team-a");
        let (health, _) = mpsc::unbounded_channel();
        board.register("team-a", &first, health, recorder());
        board
            .report("team-a/second", &second, "p", &target, MANY)
            .await;
        let contests = board.against(&first);
        assert_eq!(
            contests.len(),
            1,
            "the -patch manager is the same controller"
        );
        assert_eq!(contests[0].fields, [".data.a", ".data.b", ".data.c"]);
        assert!(contests[0].to_string().contains("team-a/second"));
        assert!(board.against(&second).is_empty());
        board.withdraw("team-a/second", Some("other-parent"));
        assert_eq!(board.against(&first).len(), 1);
        board.withdraw("team-a/second", Some("p"));
        assert!(board.against(&first).is_empty());
    }
}
