//! Which permissions the controller's ServiceAccount has, by SubjectAccessReview.

use kube::Client;
use kube::api::ApiResource;

use super::gather::Gathered;
use super::report::{Report, discover};
use crate::cluster::access::{self, Access};
use crate::cluster::rbac;
use crate::crd::{KindRef, WasmController};
use crate::reconcile::plan::{self, ObjRef};

/// Reports which of the permissions the controller needs its ServiceAccount has, by
/// SubjectAccessReview: every verb of [`rbac::rules`] (what the operator uses for this spec,
/// whatever the plugin answers; what `wasmop rbac` prints) and what the plan's `apply` patches
/// add. Each one it lacks blocks. When the reviews cannot be made, says so and notes the
/// permissions as not checked.
pub(super) async fn check_access(
    client: &Client,
    ns: &str,
    wc: &WasmController,
    parent: &ApiResource,
    gathered: &Gathered,
    plan: Option<&plan::Plan>,
    report: &mut Report,
) {
    let sa = &wc.spec.service_account_name;
    report.heading(format!("Permissions of ServiceAccount {ns}/{sa}"));
    let rules = needed_rules(client, wc, parent, gathered, plan).await;
    let access = Access::new(client.clone());
    let mut allowed: Vec<(String, Vec<&str>)> = Vec::new();
    for rule in &rules {
        let names: Vec<Option<&str>> = if rule.names.is_empty() {
            vec![None]
        } else {
            rule.names.iter().map(|n| Some(n.as_str())).collect()
        };
        let shown = match names.as_slice() {
            [Some(name)] => format!("{} {name}", rule.resource),
            _ => rule.resource.clone(),
        };
        for name in names {
            for verb in &rule.verbs {
                let checked = access
                    .require_one(ns, sa, verb, &rule.group, &rule.resource, name)
                    .await;
                match checked {
                    Ok(()) => match allowed.iter_mut().find(|(r, _)| *r == shown) {
                        Some((_, verbs)) => verbs.push(verb),
                        None => allowed.push((shown.clone(), vec![verb])),
                    },
                    Err(e @ access::Error::Denied { .. }) => {
                        report.line(format!("DENIED {verb} {shown}"));
                        report.block(format!("{e} ({})", rule.why));
                    }
                    Err(access::Error::Review(kube::Error::Api(status))) if status.code == 403 => {
                        report.line(format!(
                            "not checked: you may not create SubjectAccessReviews ({}), so what {sa} may do is unknown; ask an admin to run wasmop explain, or check its Role",
                            status.message
                        ));
                        report
                            .unchecked
                            .push(format!("the permissions of ServiceAccount {ns}/{sa}"));
                        return;
                    }
                    Err(e) => {
                        report.line(format!("not checked: {e}"));
                        report
                            .unchecked
                            .push(format!("the permissions of ServiceAccount {ns}/{sa}"));
                        return;
                    }
                }
            }
        }
    }
    for (resource, verbs) in allowed {
        report.line(format!("allowed {resource}: {}", verbs.join(", ")));
    }
}

/// The rules a reconcile of the parent needs: [`rbac::rules`] for the spec, with the kinds
/// as the API server serves them (the related kinds the parent's references name, the
/// selector kinds), and `patch` on what the plan's `apply` patches target. Kinds the API
/// server does not serve are left out (they are reported as blocking elsewhere).
pub(super) async fn needed_rules(
    client: &Client,
    wc: &WasmController,
    parent: &ApiResource,
    gathered: &Gathered,
    plan: Option<&plan::Plan>,
) -> Vec<rbac::Rule> {
    let spec = &wc.spec;
    let mut related = Vec::new();
    let mut resources: Vec<(ObjRef, ApiResource)> = Vec::new();
    for target in &gathered.related.targets {
        let kind = KindRef {
            api_version: target.api_version.clone(),
            kind: target.kind.clone(),
        };
        if let Ok(r) = discover(client, &kind).await {
            related.push(rbac::RelatedKind::Kind {
                group: r.group.clone(),
                plural: r.plural.clone(),
            });
            resources.push((target.clone(), r));
        }
    }
    for entry in spec.related.iter().filter(|e| e.ref_.is_none()) {
        if let (Some(api_version), Some(kind)) = (&entry.api_version, &entry.kind)
            && let Ok(r) = discover(
                client,
                &KindRef {
                    api_version: api_version.clone(),
                    kind: kind.clone(),
                },
            )
            .await
        {
            related.push(rbac::RelatedKind::Kind {
                group: r.group,
                plural: r.plural,
            });
        }
    }
    let kinds = rbac::Kinds {
        parent: parent.clone(),
        children: gathered
            .children
            .resources
            .iter()
            .map(|(_, r)| r.clone())
            .collect(),
        related,
    };
    let mut rules = rbac::rules(spec, &kinds);
    let patched = plan
        .map(|p| p.patches.iter().map(|a| &a.target))
        .into_iter()
        .flatten();
    rules.extend(rbac::for_patches(patched, |target| {
        if target.kind == parent.kind && target.api_version == parent.api_version {
            return Some(parent.clone());
        }
        resources
            .iter()
            .find(|(t, _)| t.kind == target.kind && t.api_version == target.api_version)
            .map(|(_, r)| r.clone())
    }));
    rules
}
