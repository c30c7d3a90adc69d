//! `wasmop graph`: the behavioural dependencies between controllers, from the cluster.
//!
//! Each WasmController's status lists what it watches, owns, reads (with the contract fields
//! it relies on), patches and finalizes ([`crate::crd::Dependencies`]). This reads them all
//! and draws controllers and kinds with `owns`, `reads`, `patches` and `finalizes` edges, as
//! text or Graphviz dot, and flags what couples controllers in one namespace: two writing the
//! same field of a kind, two holding finalizers on the same kind, and a controller whose
//! fields another one contests (its `Contested` condition).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;

use kube::api::ListParams;
use kube::{Api, ResourceExt};

use crate::crd::{Dependencies, WasmController};

/// What `wasmop graph` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Dot,
}

pub struct Options {
    /// One namespace; every namespace when None.
    pub namespace: Option<String>,
    pub kubeconfig: Option<PathBuf>,
    pub format: Format,
}

/// One controller as the graph sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    /// `Ready` condition status and reason, e.g. `True Running`.
    pub ready: String,
    pub deps: Dependencies,
    /// The `Contested` condition's message when it is True.
    pub contested: Option<String>,
}

impl Node {
    pub fn from_wc(wc: &WasmController) -> Node {
        let status = wc.status.clone().unwrap_or_default();
        let condition = |type_: &str| status.conditions.iter().find(|c| c.type_ == type_);
        Node {
            namespace: wc.namespace().unwrap_or_default(),
            name: wc.name_any(),
            service_account: wc.spec.service_account_name.clone(),
            ready: condition("Ready")
                .map_or("Unknown".into(), |c| format!("{} {}", c.status, c.reason)),
            // Not yet reported (an operator before this field): what the spec declares.
            deps: status
                .dependencies
                .clone()
                .unwrap_or_else(|| wc.spec.dependencies()),
            contested: condition("Contested")
                .filter(|c| c.status == "True")
                .map(|c| c.message.clone()),
        }
    }
}

/// Reads the WasmControllers and prints the graph.
///
/// # Errors
/// The cluster cannot be reached or the WasmControllers cannot be listed.
pub async fn graph(opts: &Options, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let config = crate::client_config(opts.kubeconfig.as_deref()).await?;
    let client = kube::Client::try_from(config)?;
    let api: Api<WasmController> = match &opts.namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let list = api.list(&ListParams::default()).await.map_err(|e| {
        anyhow::anyhow!("listing WasmControllers: {e} (is the CRD installed, may you list them?)")
    })?;
    let mut nodes: Vec<Node> = list.items.iter().map(Node::from_wc).collect();
    nodes.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let text = match opts.format {
        Format::Text => text(&nodes),
        Format::Dot => dot(&nodes),
    };
    out.write_all(text.as_bytes())?;
    Ok(())
}

/// Something that couples controllers in one namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Flag {
    /// Several controllers write one field of a kind (they co-own it, or fight over it).
    SameField {
        kind: String,
        field: String,
        controllers: Vec<String>,
    },
    /// Several controllers hold finalizers on one kind: deleting one object waits for all.
    Finalizers {
        kind: String,
        controllers: Vec<String>,
    },
    /// Another controller's writes contest fields this one owns.
    Contested { controller: String, message: String },
}

impl std::fmt::Display for Flag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Flag::SameField {
                kind,
                field,
                controllers,
            } => write!(
                f,
                "{field} of {kind} is written by {}: co-owned when they agree, a FieldConflict when they do not",
                controllers.join(" and ")
            ),
            Flag::Finalizers { kind, controllers } => write!(
                f,
                "{kind} carries finalizers of {}: deleting one waits for all of them",
                controllers.join(" and ")
            ),
            Flag::Contested {
                controller,
                message,
            } => write!(f, "{controller} is contested: {message}"),
        }
    }
}

/// The flags of the controllers of one namespace.
pub fn flags(nodes: &[&Node]) -> Vec<Flag> {
    let mut writers: BTreeMap<(&str, &str), BTreeSet<&str>> = BTreeMap::new();
    let mut finalizers: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut flags = Vec::new();
    for node in nodes {
        for patch in &node.deps.patches {
            for field in &patch.fields {
                writers
                    .entry((patch.kind.as_str(), field.as_str()))
                    .or_default()
                    .insert(&node.name);
            }
        }
        for kind in &node.deps.finalizes {
            finalizers.entry(kind).or_default().insert(&node.name);
        }
        if let Some(message) = &node.contested {
            flags.push(Flag::Contested {
                controller: node.name.clone(),
                message: message.clone(),
            });
        }
    }
    let several =
        |set: &BTreeSet<&str>| (set.len() > 1).then(|| set.iter().map(|s| s.to_string()).collect());
    for ((kind, field), set) in &writers {
        if let Some(controllers) = several(set) {
            flags.push(Flag::SameField {
                kind: kind.to_string(),
                field: field.to_string(),
                controllers,
            });
        }
    }
    for (kind, set) in &finalizers {
        if let Some(controllers) = several(set) {
            flags.push(Flag::Finalizers {
                kind: kind.to_string(),
                controllers,
            });
        }
    }
    flags.sort();
    flags
}

fn by_namespace(nodes: &[Node]) -> BTreeMap<&str, Vec<&Node>> {
    let mut out: BTreeMap<&str, Vec<&Node>> = BTreeMap::new();
    for node in nodes {
        out.entry(&node.namespace).or_default().push(node);
    }
    out
}

/// The graph as text: per namespace, each controller's edges, then the flags.
pub fn text(nodes: &[Node]) -> String {
    let mut out = String::new();
    if nodes.is_empty() {
        out.push_str("no WasmControllers\n");
    }
    for (ns, nodes) in by_namespace(nodes) {
        let _ = writeln!(out, "namespace {ns}");
        for node in &nodes {
            let _ = writeln!(
                out,
                "  WasmController {} (ServiceAccount {}, Ready {})",
                node.name, node.service_account, node.ready
            );
            let mut edge = |verb: &str, what: String| {
                let _ = writeln!(out, "    {verb:<10} {what}");
            };
            let deps = &node.deps;
            edge("watches", deps.watches.join(", "));
            if !deps.owns.is_empty() {
                edge("owns", deps.owns.join(", "));
            }
            for read in &deps.reads {
                edge(
                    "reads",
                    format!("{} via {}", read.kinds.join(", "), read.name),
                );
                for contract in &read.contract {
                    edge("", format!("  contract {contract}"));
                }
            }
            for patch in &deps.patches {
                edge(
                    "patches",
                    format!("{}: {}", patch.kind, patch.fields.join(", ")),
                );
            }
            if !deps.finalizes.is_empty() {
                edge("finalizes", deps.finalizes.join(", "));
            }
        }
        for flag in flags(&nodes) {
            let _ = writeln!(out, "  ! {flag}");
        }
    }
    out
}

/// The graph as Graphviz dot: one cluster per namespace, controllers as boxes, kinds as
/// ellipses, flags as red dashed edges between controllers (or notes on a kind).
pub fn dot(nodes: &[Node]) -> String {
    let mut out =
        String::from("digraph wasmop {\n  rankdir=LR;\n  node [fontname=\"sans-serif\"];\n");
    for (ns, nodes) in by_namespace(nodes) {
        let _ = writeln!(out, "  subgraph {} {{", quote(&format!("cluster_{ns}")));
        let _ = writeln!(out, "    label={};", quote(&format!("namespace {ns}")));
        let controller = |name: &str| quote(&format!("{ns}/{name}"));
        let kind = |k: &str| quote(&format!("{ns}|{k}"));
        let mut kinds = BTreeSet::new();
        for node in &nodes {
            let _ = writeln!(
                out,
                "    {} [shape=box, style=bold, label={}];",
                controller(&node.name),
                quote(&format!("{}\n(sa {})", node.name, node.service_account))
            );
            let deps = &node.deps;
            let mut edge = |to: &str, label: String, style: &str| {
                kinds.insert(to.to_string());
                let _ = writeln!(
                    out,
                    "    {} -> {} [label={}{style}];",
                    controller(&node.name),
                    kind(to),
                    quote(&label)
                );
            };
            for k in &deps.owns {
                edge(k, "owns".into(), "");
            }
            for read in &deps.reads {
                let mut label = format!("reads ({})", read.name);
                for c in &read.contract {
                    label.push('\n');
                    label.push_str(c);
                }
                for k in &read.kinds {
                    edge(k, label.clone(), ", style=dashed");
                }
            }
            for patch in &deps.patches {
                edge(
                    &patch.kind,
                    format!("patches\n{}", patch.fields.join("\n")),
                    ", color=blue",
                );
            }
            for k in &deps.finalizes {
                edge(k, "finalizes".into(), ", color=darkorange");
            }
        }
        for k in &kinds {
            let _ = writeln!(out, "    {} [shape=ellipse, label={}];", kind(k), quote(k));
        }
        for flag in flags(&nodes) {
            let (a, b, label) = match &flag {
                Flag::SameField {
                    kind: k,
                    field,
                    controllers,
                } => (
                    controllers[0].clone(),
                    controllers[1].clone(),
                    format!("both write {field} of {k}"),
                ),
                Flag::Finalizers {
                    kind: k,
                    controllers,
                } => (
                    controllers[0].clone(),
                    controllers[1].clone(),
                    format!("both finalize {k}"),
                ),
                Flag::Contested { controller: c, .. } => (c.clone(), c.clone(), "contested".into()),
            };
            let _ = writeln!(
                out,
                "    {} -> {} [dir=none, color=red, style=dashed, fontcolor=red, label={}];",
                controller(&a),
                controller(&b),
                quote(&format!("! {label}"))
            );
        }
        out.push_str("  }\n");
    }
    out.push_str("}\n");
    out
}

/// A dot string literal (quotes and backslashes escaped, newlines as `\n`).
fn quote(s: &str) -> String {
    let escaped = s
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!("\"{escaped}\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{PatchDependency, ReadDependency};

    fn node(name: &str, patches: &[(&str, &[&str])], finalizes: &[&str]) -> Node {
        Node {
            namespace: "team-a".into(),
            name: name.into(),
            service_account: format!("{name}-sa"),
            ready: "True Running".into(),
            deps: Dependencies {
                watches: vec!["Machine.cluster.example.com".into()],
                owns: vec!["ConfigMap".into()],
                reads: vec![ReadDependency {
                    name: "infrastructureRef".into(),
                    kinds: vec!["*.infra.example.com".into()],
                    contract: vec![
                        "ready: $.status.initialization.provisioned | $.status.ready [boolean]"
                            .into(),
                    ],
                }],
                patches: patches
                    .iter()
                    .map(|(kind, fields)| PatchDependency {
                        kind: (*kind).into(),
                        fields: fields.iter().map(|f| (*f).into()).collect(),
                    })
                    .collect(),
                finalizes: finalizes.iter().map(|k| (*k).into()).collect(),
            },
            contested: None,
        }
    }

    #[test]
    fn shared_fields_and_finalizers_in_one_namespace_are_flagged() {
        let m = "Machine.cluster.example.com";
        let nodes = [
            node("machine", &[(m, &[".status.ready", ".status.phase"])], &[m]),
            node("decorator", &[(m, &[".status.phase"])], &[m]),
            node("quiet", &[(m, &[".metadata.labels.a"])], &[]),
        ];
        let refs: Vec<&Node> = nodes.iter().collect();
        assert_eq!(
            flags(&refs),
            [
                Flag::SameField {
                    kind: m.into(),
                    field: ".status.phase".into(),
                    controllers: vec!["decorator".into(), "machine".into()],
                },
                Flag::Finalizers {
                    kind: m.into(),
                    controllers: vec!["decorator".into(), "machine".into()],
                },
            ]
        );
        // Another namespace's controllers write other objects: no flag across namespaces.
        let mut other = node("machine", &[(m, &[".status.phase"])], &[m]);
        other.namespace = "team-b".into();
        let text = text(&[nodes[0].clone(), other]);
        assert!(!text.contains(" ! "), "{text}");
        assert!(text.contains("namespace team-b"), "{text}");
    }

    #[test]
    fn text_and_dot_name_every_edge_and_flag() {
        let m = "Machine.cluster.example.com";
        let nodes = vec![
            node("machine", &[(m, &[".status.phase"])], &[m]),
            node("decorator", &[(m, &[".status.phase"])], &[]),
        ];
        let text = text(&nodes);
        for line in [
            "namespace team-a",
            "  WasmController decorator (ServiceAccount decorator-sa, Ready True Running)",
            "    owns       ConfigMap",
            "    reads      *.infra.example.com via infrastructureRef",
            "                 contract ready: $.status.initialization.provisioned | $.status.ready [boolean]",
            "    patches    Machine.cluster.example.com: .status.phase",
            "    finalizes  Machine.cluster.example.com",
            "  ! .status.phase of Machine.cluster.example.com is written by decorator and machine",
        ] {
            assert!(
                text.lines()
                    .any(|l| l == line || (line.contains('!') && l.starts_with(line))),
                "{line:?} in\n{text}"
            );
        }
        let dot = dot(&nodes);
        assert!(dot.starts_with("digraph wasmop {"), "{dot}");
        assert!(
            dot.contains(r#""team-a/machine" -> "team-a|Machine.cluster.example.com" [label="finalizes", color=darkorange];"#),
            "{dot}"
        );
        assert!(
            dot.contains(r#"label="! both write .status.phase of Machine.cluster.example.com""#),
            "{dot}"
        );
        assert_eq!(quote("a\"b\\c\nd"), r#""a\"b\\c\nd""#);
    }
}
