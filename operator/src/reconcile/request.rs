//! Step 3 of a reconcile, the request: the objects a plugin is shown, as JSON text cached by
//! object and `resourceVersion`, spliced into the request bytes.
//!
//! Most reconciles show the plugin objects it has seen before (a resync, a child's status
//! changing, a related object changing): turning each cached object into a
//! `serde_json::Value` and then into bytes again on every call was a third of the operator's
//! share of a call (BENCHMARKS.md, "the operator's path, step by step"). So each object's
//! cleaned JSON ([`kinds::clean`]) is kept as text under (uid, apiVersion), valid for one
//! `resourceVersion`: any write gives the object a new one, so an entry can never show stale
//! content. The request is then written around those texts ([`encode`]), byte for byte what
//! serialising a [`ReconcileRequest`] gives (a test pins it).
//!
//! The cache is one per process and bounded ([`CACHE_BYTES`] of text, the oldest entries
//! dropped first). Sharing it between controllers shows nobody anything new: an entry is only
//! ever looked up with an object the caller already holds from its own watch, and two readers
//! of one object at one `resourceVersion` and apiVersion are shown the same JSON by the API
//! server.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use kube::ResourceExt;
use kube::api::{ApiResource, DynamicObject};
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use wasmop_abi::{ControllerInfo, Related};

use crate::cluster::kinds;

/// The most JSON text the process keeps for requests (parents' values are counted twice).
pub const CACHE_BYTES: usize = 64 << 20;

/// An object as a plugin is shown it: its JSON text, and for a parent its value as well (the
/// plan and related references read it).
#[derive(Clone, Debug)]
pub struct Shown {
    pub text: Arc<RawValue>,
    pub value: Option<Arc<Value>>,
}

#[derive(Default)]
struct Cache {
    entries: HashMap<(String, String), (String, u64, Shown)>,
    order: VecDeque<((String, String), u64)>,
    bytes: usize,
    next: u64,
}

static CACHE: LazyLock<Mutex<Cache>> = LazyLock::new(Mutex::default);

impl Cache {
    fn get(&self, key: &(String, String), rv: &str, value: bool) -> Option<Shown> {
        let (at, _, shown) = self.entries.get(key)?;
        (at == rv && (!value || shown.value.is_some())).then(|| shown.clone())
    }

    fn put(&mut self, key: (String, String), rv: String, shown: Shown) {
        let size = cost(&shown);
        let seq = self.next;
        self.next += 1;
        if let Some((_, _, old)) = self.entries.insert(key.clone(), (rv, seq, shown)) {
            self.bytes -= cost(&old);
        }
        self.bytes += size;
        self.order.push_back((key, seq));
        while self.bytes > CACHE_BYTES {
            let Some((key, seq)) = self.order.pop_front() else {
                break;
            };
            // Only the newest insertion of a key removes it.
            if self.entries.get(&key).is_some_and(|(_, s, _)| *s == seq)
                && let Some((_, _, old)) = self.entries.remove(&key)
            {
                self.bytes -= cost(&old);
            }
        }
    }
}

fn cost(shown: &Shown) -> usize {
    let text = shown.text.get().len();
    text + if shown.value.is_some() { text } else { 0 }
}

/// `obj` as the plugin is shown it (`value`: with its `Value` too), from the cache when the
/// object has not changed since.
pub fn shown(obj: &DynamicObject, resource: &ApiResource, value: bool) -> Shown {
    let (uid, rv) = (obj.uid(), obj.resource_version());
    let key = uid.map(|uid| (uid, resource.api_version.clone()));
    if let (Some(key), Some(rv)) = (&key, &rv) {
        let cache = CACHE.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(hit) = cache.get(key, rv, value) {
            return hit;
        }
    }
    let cleaned = kinds::clean(obj.clone(), resource);
    let text = serde_json::to_string(&cleaned).expect("objects serialise");
    let shown = Shown {
        text: Arc::from(RawValue::from_string(text).expect("serde_json writes JSON")),
        value: value.then(|| Arc::new(cleaned)),
    };
    if let (Some(key), Some(rv)) = (key, rv) {
        let mut cache = CACHE.lock().unwrap_or_else(PoisonError::into_inner);
        cache.put(key, rv, shown.clone());
    }
    shown
}

/// The children a plugin is shown: by `child_key`, then by name.
pub type Children = BTreeMap<String, BTreeMap<String, Arc<RawValue>>>;

/// [`wasmop_abi::ReconcileRequest`], field for field and in its order, with the objects as text.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Wire<'a> {
    abi_version: &'a str,
    controller: &'a ControllerInfo,
    object: &'a RawValue,
    children: BTreeMap<&'a str, BTreeMap<&'a str, &'a RawValue>>,
    related: &'a BTreeMap<String, Related>,
    finalizing: bool,
}

/// The request bytes: what `serde_json::to_vec` of the [`wasmop_abi::ReconcileRequest`] with
/// these parts gives, without turning the objects into values again.
pub fn encode(
    controller: &ControllerInfo,
    object: &RawValue,
    children: &Children,
    related: &BTreeMap<String, Related>,
    finalizing: bool,
) -> Vec<u8> {
    let children = children
        .iter()
        .map(|(kind, named)| {
            let named = named.iter().map(|(n, t)| (n.as_str(), &**t)).collect();
            (kind.as_str(), named)
        })
        .collect();
    let wire = Wire {
        abi_version: wasmop_abi::ABI_VERSION,
        controller,
        object,
        children,
        related,
        finalizing,
    };
    serde_json::to_vec(&wire).expect("requests serialise")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use wasmop_abi::ReconcileRequest;

    fn object(uid: &str, rv: &str, name: &str, data: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "team", "uid": uid, "resourceVersion": rv,
                         "managedFields": [{"manager": "x", "operation": "Apply"}]},
            "data": data,
        }))
        .unwrap()
    }

    fn resource() -> ApiResource {
        ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&())
    }

    #[test]
    fn the_spliced_request_is_byte_for_byte_the_serialised_one() {
        let parent = object("p-1", "7", "site", json!({"a": "1", "z": "ü\"\n"}));
        let child = object(
            "c-1",
            "9",
            "site-page",
            json!({"index.html": "<h1>hi</h1>"}),
        );
        let controller = ControllerInfo {
            name: "ctl".into(),
            namespace: "team".into(),
            config: json!({"replicas": 2, "b": [1, {"c": null}]}),
        };
        let related = BTreeMap::from([(
            "ref".to_string(),
            Related {
                object: Some(json!({"kind": "X"})),
                ..Default::default()
            },
        )]);
        for finalizing in [false, true] {
            let expected = serde_json::to_vec(&ReconcileRequest {
                abi_version: wasmop_abi::ABI_VERSION.into(),
                controller: controller.clone(),
                object: kinds::clean(parent.clone(), &resource()),
                children: BTreeMap::from([(
                    "ConfigMap.v1".to_string(),
                    BTreeMap::from([(
                        "site-page".to_string(),
                        kinds::clean(child.clone(), &resource()),
                    )]),
                )]),
                related: related.clone(),
                finalizing,
            })
            .unwrap();
            let children = BTreeMap::from([(
                "ConfigMap.v1".to_string(),
                BTreeMap::from([(
                    "site-page".to_string(),
                    shown(&child, &resource(), false).text,
                )]),
            )]);
            let parent = shown(&parent, &resource(), true);
            let got = encode(&controller, &parent.text, &children, &related, finalizing);
            assert_eq!(
                String::from_utf8(got).unwrap(),
                String::from_utf8(expected).unwrap()
            );
        }
    }

    #[test]
    fn a_new_resource_version_is_never_shown_the_old_json() {
        let before = object("u-rv", "1", "cm", json!({"k": "old"}));
        let after = object("u-rv", "2", "cm", json!({"k": "new"}));
        assert!(
            shown(&before, &resource(), false)
                .text
                .get()
                .contains("old")
        );
        let now = shown(&after, &resource(), true);
        assert!(now.text.get().contains("new") && !now.text.get().contains("old"));
        assert_eq!(now.value.unwrap()["data"]["k"], "new");
        assert!(!now.text.get().contains("managedFields"));
    }

    #[test]
    fn the_cache_stays_within_its_bound() {
        let big = "x".repeat(1 << 20);
        let mut cache = Cache::default();
        for i in 0..200 {
            let text = serde_json::to_string(&json!({"data": big})).unwrap();
            let shown = Shown {
                text: Arc::from(RawValue::from_string(text).unwrap()),
                value: None,
            };
            cache.put((format!("u-{i}"), "v1".into()), "1".into(), shown);
            assert!(cache.bytes <= CACHE_BYTES);
        }
        assert!(
            cache
                .get(&("u-199".into(), "v1".into()), "1", false)
                .is_some()
        );
        assert!(
            cache
                .get(&("u-0".into(), "v1".into()), "1", false)
                .is_none()
        );
        assert_eq!(cache.entries.len(), CACHE_BYTES / ((1 << 20) + 11));
    }
}
