//! API requests per ServiceAccount, as the API server counts them: a pair of FlowSchemas
//! per subject (writes, everything else) and `apiserver_flowcontrol_dispatched_requests_total`.

use crate::env::Env;
use crate::prelude::*;
use crate::subjects::Subject;

/// Requests the API server dispatched per FlowSchema of ours (cumulative).
pub(crate) fn flow_counts(env: &Env) -> Res<HashMap<String, f64>> {
    let text = env.kubectl(&["get", "--raw", "/metrics"])?;
    let mut out = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_flowcontrol_dispatched_requests_total{")
        else {
            continue;
        };
        let Some(fs) = rest
            .split("flow_schema=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
        else {
            continue;
        };
        if !fs.starts_with("nfs3p-bench-") {
            continue;
        }
        let v: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *out.entry(fs.to_string()).or_insert(0.0) += v;
    }
    Ok(out)
}

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Requests {
    pub(crate) writes: f64,
    pub(crate) all: f64,
}

pub(crate) fn requests_between(
    before: &HashMap<String, f64>,
    after: &HashMap<String, f64>,
    s: Subject,
) -> Requests {
    let get = |m: &HashMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);
    let w = format!("{}-writes", s.flow_prefix());
    let r = format!("{}-reads", s.flow_prefix());
    let writes = get(after, &w) - get(before, &w);
    let reads = get(after, &r) - get(before, &r);
    Requests {
        writes,
        all: writes + reads,
    }
}

pub(crate) fn flow_schemas_yaml(s: Subject, sa: &str, sa_ns: &str) -> String {
    let p = s.flow_prefix();
    let subject = format!(
        "    - kind: ServiceAccount\n      serviceAccount: {{name: {sa}, namespace: {sa_ns}}}\n"
    );
    // Same priority level as the built-in `service-accounts` schema gives them: only the
    // schema's name changes, so each provisioner's requests are counted apart.
    format!(
        "apiVersion: flowcontrol.apiserver.k8s.io/v1
kind: FlowSchema
metadata: {{name: {p}-writes}}
spec:
  matchingPrecedence: 190
  priorityLevelConfiguration: {{name: workload-low}}
  distinguisherMethod: {{type: ByUser}}
  rules:
  - subjects:
{subject}    resourceRules:
    - verbs: [create, update, patch, delete, deletecollection]
      apiGroups: ['*']
      resources: ['*']
      clusterScope: true
      namespaces: ['*']
---
apiVersion: flowcontrol.apiserver.k8s.io/v1
kind: FlowSchema
metadata: {{name: {p}-reads}}
spec:
  matchingPrecedence: 191
  priorityLevelConfiguration: {{name: workload-low}}
  distinguisherMethod: {{type: ByUser}}
  rules:
  - subjects:
{subject}    resourceRules:
    - verbs: ['*']
      apiGroups: ['*']
      resources: ['*']
      clusterScope: true
      namespaces: ['*']
    nonResourceRules:
    - verbs: ['*']
      nonResourceURLs: ['*']
"
    )
}
