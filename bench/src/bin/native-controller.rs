//! The Website controller written natively with kube-runtime, for the end-to-end comparison:
//! the same logic (the `website-plugin` crate's `reconcile`, called as a Rust function), the
//! way a careful hand-written kube-rs controller does it (controller-rs style), doing the work
//! wasmop does:
//! - a `Controller` over Websites owning ConfigMaps and Deployments, children looked up by name
//!   in reflector stores;
//! - every desired child server-side-applied (forced, as wasmop forces its children) on every
//!   reconcile, an existing one with its `metadata.uid` as a precondition, as wasmop does;
//! - owned children no longer desired deleted with a uid precondition (prune);
//! - the status server-side-applied (not forced), and a generation predicate on the Websites
//!   so its own status write does not reconcile the parent again;
//! - the plugin's events recorded.
//!
//! What it does not do that wasmop does: dry runs, skipping an apply that would change
//! nothing, ownership checks of an existing object of a child's name, access reviews. One
//! namespace per process.
//!
//! `/metrics` serves `native_reconciles_total` so the benchmark can count reconciles.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use futures::StreamExt;
use http_body_util::Full;
use hyper::body::Bytes;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::watch;
use wasmop_abi::{ABI_VERSION, ControllerInfo, ReconcileRequest};

const MANAGER: &str = "native-website";
const LABEL: &str = "bench.wasmop.dev/native";

#[derive(Parser)]
struct Args {
    #[arg(long)]
    kubeconfig: PathBuf,
    #[arg(long)]
    namespace: String,
    #[arg(long, default_value = "127.0.0.1:0")]
    metrics_addr: SocketAddr,
    /// Reconciles at once (wasmop's default `maxConcurrentReconciles` is 4).
    #[arg(long, default_value_t = 4)]
    concurrency: u16,
    /// Requeue after a successful reconcile (wasmop's `resyncPeriod` in the benchmark).
    #[arg(long, default_value_t = 600)]
    resync_seconds: u64,
}

struct Ctx {
    client: Client,
    namespace: String,
    configmaps: Store<ConfigMap>,
    deployments: Store<Deployment>,
    ready: watch::Receiver<u8>,
    recorder: Recorder,
    reconciles: AtomicU64,
    resync: Duration,
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Logic(String),
}

fn website() -> ApiResource {
    ApiResource {
        group: "example.com".into(),
        version: "v1".into(),
        api_version: "example.com/v1".into(),
        kind: "Website".into(),
        plural: "websites".into(),
    }
}

/// A value as a plugin sees it: apiVersion/kind set, managedFields dropped.
fn clean<K: Resource<DynamicType = ()> + serde::Serialize>(obj: &K) -> Value {
    let mut v = serde_json::to_value(obj).expect("objects serialise");
    v["apiVersion"] = json!(K::api_version(&()));
    v["kind"] = json!(K::kind(&()));
    if let Some(meta) = v["metadata"].as_object_mut() {
        meta.remove("managedFields");
    }
    v
}

fn owned_by<K: Resource>(obj: &K, uid: &str) -> bool {
    obj.owner_references()
        .iter()
        .any(|o| o.uid == uid && o.controller == Some(true))
}

async fn reconcile(parent: Arc<DynamicObject>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    // Both child caches must be listed before their contents mean anything.
    let _ = ctx.ready.clone().wait_for(|n| *n >= 2).await;
    let name = parent.name_any();
    let uid = parent.uid().unwrap_or_default();
    let ns = ctx.namespace.clone();
    let mut object = serde_json::to_value(parent.as_ref()).expect("objects serialise");
    if let Some(meta) = object["metadata"].as_object_mut() {
        meta.remove("managedFields");
    }
    let mut children = std::collections::BTreeMap::new();
    let cm_name = format!("{name}-content");
    if let Some(cm) = ctx
        .configmaps
        .get(&ObjectRef::new(&cm_name).within(&ns))
        .filter(|c| owned_by(c.as_ref(), &uid))
    {
        children.insert(
            wasmop_abi::child_key("v1", "ConfigMap"),
            [(cm_name.clone(), clean(cm.as_ref()))].into(),
        );
    }
    if let Some(d) = ctx
        .deployments
        .get(&ObjectRef::new(&name).within(&ns))
        .filter(|d| owned_by(d.as_ref(), &uid))
    {
        children.insert(
            wasmop_abi::child_key("apps/v1", "Deployment"),
            [(name.clone(), clean(d.as_ref()))].into(),
        );
    }
    let request = ReconcileRequest {
        abi_version: ABI_VERSION.into(),
        controller: ControllerInfo {
            name: "website".into(),
            namespace: ns.clone(),
            config: json!({"replicas": 2}),
        },
        object,
        children,
        related: Default::default(),
        finalizing: false,
    };
    let response = website_plugin::reconcile(&request).map_err(|e| Error::Logic(e.to_string()))?;

    let owner = json!([{
        "apiVersion": "example.com/v1", "kind": "Website", "name": name, "uid": uid,
        "controller": true, "blockOwnerDeletion": true,
    }]);
    let pp = PatchParams::apply(MANAGER).force();
    let mut desired = std::collections::BTreeSet::new();
    for mut child in response.children {
        child["metadata"]["namespace"] = json!(ns);
        child["metadata"]["ownerReferences"] = owner.clone();
        child["metadata"]["labels"][LABEL] = json!("website");
        let child_name = child["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let kind = child["kind"].as_str().unwrap_or_default().to_string();
        let live_uid = match kind.as_str() {
            "ConfigMap" => ctx
                .configmaps
                .get(&ObjectRef::new(&child_name).within(&ns))
                .and_then(|c| c.uid()),
            "Deployment" => ctx
                .deployments
                .get(&ObjectRef::new(&child_name).within(&ns))
                .and_then(|d| d.uid()),
            other => return Err(Error::Logic(format!("unexpected child kind {other:?}"))),
        };
        if let Some(uid) = live_uid {
            child["metadata"]["uid"] = json!(uid); // only the object we saw
        }
        match kind.as_str() {
            "ConfigMap" => {
                Api::<ConfigMap>::namespaced(ctx.client.clone(), &ns)
                    .patch(&child_name, &pp, &Patch::Apply(&child))
                    .await?;
            }
            _ => {
                Api::<Deployment>::namespaced(ctx.client.clone(), &ns)
                    .patch(&child_name, &pp, &Patch::Apply(&child))
                    .await?;
            }
        }
        desired.insert((kind, child_name));
    }
    prune(&ctx, &uid, &desired).await?;
    if let Some(status) = response.status {
        let body = json!({"apiVersion": "example.com/v1", "kind": "Website",
            "metadata": {"uid": uid}, "status": status});
        Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &ns, &website())
            .patch_status(&name, &PatchParams::apply(MANAGER), &Patch::Apply(&body))
            .await?;
    }
    let reference = parent.object_ref(&website());
    for event in response.events {
        let type_ = match event.type_ {
            wasmop_abi::EventType::Warning => EventType::Warning,
            _ => EventType::Normal,
        };
        let _ = ctx
            .recorder
            .publish(
                &Event {
                    type_,
                    reason: event.reason,
                    note: Some(event.message),
                    action: "Reconcile".into(),
                    secondary: None,
                },
                &reference,
            )
            .await;
    }
    ctx.reconciles.fetch_add(1, Ordering::Relaxed);
    Ok(Action::requeue(ctx.resync))
}

/// Deletes the children of the parent `uid` (controller ownerReference) that are not
/// `desired`, each with a uid precondition.
async fn prune(
    ctx: &Ctx,
    uid: &str,
    desired: &std::collections::BTreeSet<(String, String)>,
) -> Result<(), Error> {
    let gone = |kind: &str, name: &str| !desired.contains(&(kind.to_string(), name.to_string()));
    let precondition = |uid: Option<String>| DeleteParams {
        preconditions: Some(Preconditions {
            uid,
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    for cm in ctx.configmaps.state() {
        if owned_by(cm.as_ref(), uid) && gone("ConfigMap", &cm.name_any()) {
            Api::<ConfigMap>::namespaced(ctx.client.clone(), &ctx.namespace)
                .delete(&cm.name_any(), &precondition(cm.uid()))
                .await?;
        }
    }
    for d in ctx.deployments.state() {
        if owned_by(d.as_ref(), uid) && gone("Deployment", &d.name_any()) {
            Api::<Deployment>::namespaced(ctx.client.clone(), &ctx.namespace)
                .delete(&d.name_any(), &precondition(d.uid()))
                .await?;
        }
    }
    Ok(())
}

fn error_policy(_: Arc<DynamicObject>, error: &Error, _: Arc<Ctx>) -> Action {
    eprintln!("reconcile failed: {error}");
    Action::requeue(Duration::from_secs(1))
}

/// A child kind's store and its change stream (objects this controller labelled).
fn child_watch<K>(
    client: &Client,
    ns: &str,
    ready: watch::Sender<u8>,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let config = watcher::Config::default().labels(&format!("{LABEL}=website"));
    let stream = watcher(Api::<K>::namespaced(client.clone(), ns), config)
        .default_backoff()
        .reflect(writer)
        .inspect(move |event| {
            if let Ok(watcher::Event::InitDone) = event {
                ready.send_modify(|n| *n += 1);
            }
        })
        .applied_objects();
    (store, stream)
}

async fn serve_metrics(addr: SocketAddr, ctx: Arc<Ctx>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("metrics on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_req| {
                let body = format!(
                    "native_reconciles_total {}\n",
                    ctx.reconciles.load(Ordering::Relaxed)
                );
                async move { Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(body)))) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let config = wasmop::client_config(Some(&args.kubeconfig)).await?;
    let client = Client::try_from(config)?;
    let ns = args.namespace.clone();
    let (ready_tx, ready) = watch::channel(0u8);
    let (configmaps, cm_stream) = child_watch::<ConfigMap>(&client, &ns, ready_tx.clone());
    let (deployments, deploy_stream) = child_watch::<Deployment>(&client, &ns, ready_tx);
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: None,
            },
        ),
        client: client.clone(),
        namespace: ns.clone(),
        configmaps,
        deployments,
        ready,
        reconciles: AtomicU64::new(0),
        resync: Duration::from_secs(args.resync_seconds),
    });
    tokio::spawn(serve_metrics(args.metrics_addr, ctx.clone()));
    // Its own status writes do not bump the generation: the predicate drops them.
    let writer = reflector::store::Writer::<DynamicObject>::new(website());
    let parents = writer.as_reader();
    let websites = Api::<DynamicObject>::namespaced_with(client, &ns, &website());
    let parent_stream = watcher(websites, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    Controller::for_stream_with(parent_stream, parents, website())
        .owns_stream(cm_stream)
        .owns_stream(deploy_stream)
        .with_config(ControllerConfig::default().concurrency(args.concurrency))
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
    Ok(())
}
