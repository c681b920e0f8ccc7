//! deploy/ checked as the programs that read it would check it, offline:
//! every Kubernetes object against the API server's schemas
//! (kubernetes-validate, strict: unknown fields refused) both as written
//! and as `kubectl apply -k` sends it (namespace set, ConfigMap generated,
//! patches applied); the Dockerfile with hadolint; and the Istio objects,
//! whose CRD schemas kubernetes-validate does not ship, against the fields
//! Istio's API defines for what they use.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::{Map, Value, json};
use yaml_rust2::{Yaml, YamlLoader};

use crate::tools::tool;

/// The Kubernetes versions the manifests are validated against: the oldest
/// that has everything they use (gRPC probes are GA from 1.27), and the
/// newest kubernetes-validate 1.37.0 ships schemas for.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.27.0", "1.37.0"];

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// A YAML node as JSON (what kubectl sends, and what merging works on).
fn to_json(yaml: &Yaml) -> Value {
    match yaml {
        Yaml::Real(text) => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Null, Value::Number),
        Yaml::Integer(n) => json!(n),
        Yaml::String(s) => json!(s),
        Yaml::Boolean(b) => json!(b),
        Yaml::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        Yaml::Hash(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        Yaml::Integer(n) => n.to_string(),
                        other => panic!("a mapping key that is not a string: {other:?}"),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Yaml::Null => Value::Null,
        Yaml::Alias(_) | Yaml::BadValue => panic!("unsupported YAML node {yaml:?}"),
    }
}

/// Every document of a YAML file, as JSON.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .iter()
        .map(to_json)
        .collect()
}

/// The Kubernetes directories of deploy/ (each a kustomization).
fn kubernetes_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(deploy())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("kubernetes")
        })
        .collect();
    dirs.sort();
    assert_eq!(dirs.len(), 2, "{dirs:?}");
    dirs
}

/// Runs kubernetes-validate (strict) over `files` for every version; the
/// combined output, or a panic naming what failed.
fn kubernetes_validate(files: &[PathBuf]) -> String {
    let mut report = String::new();
    for version in KUBERNETES_VERSIONS {
        let output = Command::new(tool("kubernetes-validate"))
            .args(["--strict", "--kubernetes-version", version])
            .args(files)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success() && !text.contains("ERROR") && !text.contains("WARN"),
            "kubernetes-validate {version}:\n{text}"
        );
        // One "passed" per document: nothing was skipped for want of a schema.
        let passed = text.matches(" passed for resource ").count();
        let expected: usize = files.iter().map(|f| documents(f).len()).sum();
        assert_eq!(passed, expected, "kubernetes-validate {version}:\n{text}");
        report.push_str(&text);
    }
    report
}

#[test]
fn every_kubernetes_object_validates_against_the_api_schemas() {
    let mut files = Vec::new();
    for dir in kubernetes_dirs() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.ends_with(".yaml") && name != "kustomization.yaml" {
                files.push(path);
            }
        }
    }
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    kubernetes_validate(&files);
}

#[test]
fn a_wrong_field_fails_the_validation() {
    // So that the test above cannot pass by validating nothing.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(deploy().join("kubernetes/statefulset.yaml")).unwrap();
    let bad = dir.path().join("statefulset.yaml");
    std::fs::write(&bad, text.replace("  replicas: 1", "  replica: 1")).unwrap();
    let output = Command::new(tool("kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSIONS[0]])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("'replica' was unexpected"));
}

/// The fields of a Kustomization that kustomize knows (kustomize's
/// `types.Kustomization`); a misspelt one is ignored by nothing.
const KUSTOMIZATION_FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "resources",
    "components",
    "namespace",
    "namePrefix",
    "nameSuffix",
    "labels",
    "commonLabels",
    "commonAnnotations",
    "configMapGenerator",
    "secretGenerator",
    "generatorOptions",
    "patches",
    "images",
    "replicas",
    "replacements",
    "buildMetadata",
    "openapi",
    "crds",
    "transformers",
    "generators",
    "validators",
];

/// The objects `kubectl apply -k dir` would send, as far as they matter to
/// the API server's schemas: resources (and the kustomizations they name)
/// loaded, the ConfigMap generated, the namespace set, patches applied.
/// (Labels and the ConfigMap's hash suffix are left out: they change no
/// field's shape.)
fn render(dir: &Path) -> Vec<Value> {
    let kustomization = documents(&dir.join("kustomization.yaml")).remove(0);
    let fields = kustomization.as_object().unwrap();
    for key in fields.keys() {
        assert!(
            KUSTOMIZATION_FIELDS.contains(&key.as_str()),
            "{}: kustomize knows no field {key:?}",
            dir.display()
        );
    }
    assert_eq!(
        kustomization["apiVersion"],
        "kustomize.config.k8s.io/v1beta1",
        "{}",
        dir.display()
    );
    assert_eq!(kustomization["kind"], "Kustomization");

    let mut objects = Vec::new();
    for resource in kustomization["resources"].as_array().unwrap() {
        let path = dir.join(resource.as_str().unwrap());
        assert!(path.exists(), "{}: no {}", dir.display(), path.display());
        if path.is_dir() {
            objects.extend(render(&path));
        } else {
            objects.extend(documents(&path));
        }
    }
    for generator in kustomization["configMapGenerator"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let mut data = Map::new();
        for file in generator["files"].as_array().unwrap() {
            let file = file.as_str().unwrap();
            let text = std::fs::read_to_string(dir.join(file))
                .unwrap_or_else(|e| panic!("{}: {file}: {e}", dir.display()));
            data.insert(file.to_owned(), json!(text));
        }
        objects.push(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": generator["name"]},
            "data": data,
        }));
    }
    if let Some(namespace) = kustomization["namespace"].as_str() {
        for object in &mut objects {
            if object["kind"] != "Namespace" {
                object["metadata"]["namespace"] = json!(namespace);
            }
        }
    }
    for patch in kustomization["patches"].as_array().into_iter().flatten() {
        let text = patch["patch"].as_str().unwrap();
        let patch = to_json(&YamlLoader::load_from_str(text).unwrap()[0]);
        let position = objects
            .iter()
            .position(|o| {
                o["kind"] == patch["kind"] && o["metadata"]["name"] == patch["metadata"]["name"]
            })
            .unwrap_or_else(|| panic!("{}: the patch {patch} has no target", dir.display()));
        if patch["$patch"] == "delete" {
            objects.remove(position);
        } else {
            merge(&mut objects[position], &patch);
        }
    }
    objects
}

/// A strategic merge of maps: `null` removes a field, other values replace.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

#[test]
fn what_kubectl_apply_k_sends_validates_against_the_api_schemas() {
    let work = tempfile::tempdir().unwrap();
    for dir in kubernetes_dirs() {
        let objects = render(&dir);
        let kinds: Vec<&str> = objects
            .iter()
            .map(|o| o["kind"].as_str().unwrap())
            .collect();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        // What each variant runs: one sled writer, or replicas on PostgreSQL.
        let workload = if name == "kubernetes" {
            "StatefulSet"
        } else {
            "Deployment"
        };
        for kind in [
            "Namespace",
            "Service",
            "PodDisruptionBudget",
            "ConfigMap",
            workload,
        ] {
            assert_eq!(
                kinds.iter().filter(|k| **k == kind).count(),
                1,
                "{name}: {kinds:?}"
            );
        }
        let pdb = objects
            .iter()
            .find(|o| o["kind"] == "PodDisruptionBudget")
            .unwrap();
        // A PodDisruptionBudget takes minAvailable or maxUnavailable, not both.
        assert!(
            pdb["spec"]["minAvailable"].is_null() != pdb["spec"]["maxUnavailable"].is_null(),
            "{name}: {pdb}"
        );
        let files: Vec<PathBuf> = objects
            .iter()
            .enumerate()
            .map(|(i, object)| {
                let file = work.path().join(format!("{name}-{i}.json"));
                std::fs::write(&file, serde_json::to_string_pretty(object).unwrap()).unwrap();
                file
            })
            .collect();
        kubernetes_validate(&files);
    }
}

#[test]
fn the_dockerfile_passes_hadolint() {
    let dockerfile = deploy().join("Dockerfile");
    let output = Command::new(tool("hadolint"))
        .args(["--no-color", "--failure-threshold", "style"])
        .arg(&dockerfile)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && text.is_empty(),
        "hadolint:\n{text}"
    );
    // Every rule left out says why, on the comment line above it.
    let text = std::fs::read_to_string(&dockerfile).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.contains("hadolint ignore=") {
            assert!(
                i > 0 && lines[i - 1].starts_with('#') && !lines[i - 1].contains("hadolint"),
                "line {}: an ignored rule without a reason above it",
                i + 1
            );
        }
    }
}

/// The shape of a field, as Istio's API defines it.
enum Shape {
    String,
    /// A protobuf Duration in JSON: `0.25s`.
    Duration,
    Port,
    Bool,
    OneOf(&'static [&'static str]),
    List(&'static Shape),
    /// String keys to string values.
    StringMap,
    /// Named fields; `true` marks a required one.
    Fields(&'static [(&'static str, Shape, bool)]),
}

const STRINGS: Shape = Shape::List(&Shape::String);

/// An AuthorizationPolicy (security.istio.io/v1), for the fields this
/// project may use: Istio's CRD schema has these and refuses others.
/// PeerAuthentication's spec (security.istio.io/v1), without
/// `portLevelMtls`, whose port-keyed map this checker has no shape for.
const PEER_AUTHENTICATION_SPEC: Shape = Shape::Fields(&[
    (
        "selector",
        Shape::Fields(&[("matchLabels", Shape::StringMap, false)]),
        false,
    ),
    (
        "mtls",
        Shape::Fields(&[(
            "mode",
            Shape::OneOf(&["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]),
            false,
        )]),
        false,
    ),
]);

const AUTHORIZATION_POLICY_SPEC: Shape = Shape::Fields(&[
    (
        "selector",
        Shape::Fields(&[("matchLabels", Shape::StringMap, false)]),
        false,
    ),
    (
        "action",
        Shape::OneOf(&["ALLOW", "DENY", "AUDIT", "CUSTOM"]),
        false,
    ),
    (
        "provider",
        Shape::Fields(&[("name", Shape::String, false)]),
        false,
    ),
    (
        "rules",
        Shape::List(&Shape::Fields(&[
            (
                "from",
                Shape::List(&Shape::Fields(&[(
                    "source",
                    Shape::Fields(&[
                        ("principals", STRINGS, false),
                        ("notPrincipals", STRINGS, false),
                        ("requestPrincipals", STRINGS, false),
                        ("notRequestPrincipals", STRINGS, false),
                        ("namespaces", STRINGS, false),
                        ("notNamespaces", STRINGS, false),
                        ("ipBlocks", STRINGS, false),
                        ("notIpBlocks", STRINGS, false),
                        ("remoteIpBlocks", STRINGS, false),
                        ("notRemoteIpBlocks", STRINGS, false),
                    ]),
                    false,
                )])),
                false,
            ),
            (
                "to",
                Shape::List(&Shape::Fields(&[(
                    "operation",
                    Shape::Fields(&[
                        ("hosts", STRINGS, false),
                        ("notHosts", STRINGS, false),
                        ("ports", STRINGS, false),
                        ("notPorts", STRINGS, false),
                        ("methods", STRINGS, false),
                        ("notMethods", STRINGS, false),
                        ("paths", STRINGS, false),
                        ("notPaths", STRINGS, false),
                    ]),
                    false,
                )])),
                false,
            ),
            (
                "when",
                Shape::List(&Shape::Fields(&[
                    ("key", Shape::String, true),
                    ("values", STRINGS, false),
                    ("notValues", STRINGS, false),
                ])),
                false,
            ),
        ])),
        false,
    ),
]);

/// The part of an IstioOperator this project uses: meshConfig's path
/// normalization and an ext_authz gRPC extension provider (Istio's
/// `mesh/v1alpha1/config.proto`, in its JSON names).
const ISTIO_OPERATOR_SPEC: Shape = Shape::Fields(&[(
    "meshConfig",
    Shape::Fields(&[
        (
            "pathNormalization",
            Shape::Fields(&[(
                "normalization",
                Shape::OneOf(&[
                    "DEFAULT",
                    "NONE",
                    "BASE",
                    "MERGE_SLASHES",
                    "DECODE_AND_MERGE_SLASHES",
                ]),
                false,
            )]),
            false,
        ),
        (
            "extensionProviders",
            Shape::List(&Shape::Fields(&[
                ("name", Shape::String, true),
                (
                    "envoyExtAuthzGrpc",
                    Shape::Fields(&[
                        ("service", Shape::String, true),
                        ("port", Shape::Port, true),
                        ("timeout", Shape::Duration, false),
                        ("failOpen", Shape::Bool, false),
                        ("clearRouteCache", Shape::Bool, false),
                        ("statusOnError", Shape::String, false),
                        (
                            "includeRequestBodyInCheck",
                            Shape::Fields(&[
                                ("maxRequestBytes", Shape::Port, false),
                                ("allowPartialMessage", Shape::Bool, false),
                                ("packAsBytes", Shape::Bool, false),
                            ]),
                            false,
                        ),
                    ]),
                    false,
                ),
            ])),
            false,
        ),
    ]),
    false,
)]);

/// The problems of `value` against `shape`, each with its path.
fn check_shape(path: &str, value: &Value, shape: &Shape, problems: &mut Vec<String>) {
    let mut problem = |what: String| problems.push(format!("{path}: {what}"));
    match shape {
        Shape::String => {
            if !value.is_string() {
                problem(format!("{value} is not a string"));
            }
        }
        Shape::Bool => {
            if !value.is_boolean() {
                problem(format!("{value} is not a boolean"));
            }
        }
        Shape::Port => {
            if value.as_u64().is_none_or(|n| n > 65_535) {
                problem(format!("{value} is not a port number"));
            }
        }
        Shape::Duration => {
            let ok = value
                .as_str()
                .and_then(|s| s.strip_suffix('s'))
                .is_some_and(|n| n.parse::<f64>().is_ok_and(|n| n >= 0.0));
            if !ok {
                problem(format!("{value} is not a duration like 0.25s"));
            }
        }
        Shape::OneOf(allowed) => {
            if !value.as_str().is_some_and(|s| allowed.contains(&s)) {
                problem(format!("{value} is not one of {allowed:?}"));
            }
        }
        Shape::StringMap => match value.as_object() {
            Some(map) if map.values().all(Value::is_string) => {}
            _ => problem(format!("{value} is not a map of strings")),
        },
        Shape::List(item) => match value.as_array() {
            Some(items) => {
                for (i, element) in items.iter().enumerate() {
                    check_shape(&format!("{path}[{i}]"), element, item, problems);
                }
            }
            None => problem(format!("{value} is not a list")),
        },
        Shape::Fields(fields) => {
            let Some(map) = value.as_object() else {
                problem(format!("{value} is not a mapping"));
                return;
            };
            for key in map.keys() {
                if !fields.iter().any(|(name, _, _)| name == key) {
                    problems.push(format!("{path}.{key}: no such field"));
                }
            }
            for (name, shape, required) in *fields {
                match map.get(*name) {
                    Some(field) => check_shape(&format!("{path}.{name}"), field, shape, problems),
                    None if *required => problems.push(format!("{path}.{name}: required")),
                    None => {}
                }
            }
        }
    }
}

/// The problems of an Istio object: its type, its metadata, and its spec
/// against the shape of its kind.
fn istio_problems(object: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let (spec_shape, needs_name) = match (object["apiVersion"].as_str(), object["kind"].as_str()) {
        (Some("security.istio.io/v1"), Some("AuthorizationPolicy")) => {
            (&AUTHORIZATION_POLICY_SPEC, true)
        }
        (Some("security.istio.io/v1"), Some("PeerAuthentication")) => {
            (&PEER_AUTHENTICATION_SPEC, true)
        }
        // istioctl install -f takes an overlay without metadata.
        (Some("install.istio.io/v1alpha1"), Some("IstioOperator")) => (&ISTIO_OPERATOR_SPEC, false),
        (version, kind) => return vec![format!("an unknown type {version:?} {kind:?}")],
    };
    for key in object.as_object().unwrap().keys() {
        if !["apiVersion", "kind", "metadata", "spec"].contains(&key.as_str()) {
            problems.push(format!("{key}: no such field"));
        }
    }
    const METADATA: Shape = Shape::Fields(&[
        ("name", Shape::String, false),
        ("namespace", Shape::String, false),
        ("labels", Shape::StringMap, false),
        ("annotations", Shape::StringMap, false),
    ]);
    match object.get("metadata") {
        Some(value) => check_shape("metadata", value, &METADATA, &mut problems),
        None if needs_name => problems.push("metadata.name: required".into()),
        None => {}
    }
    if needs_name && !object["metadata"]["name"].is_string() {
        problems.push("metadata.name: required".into());
    }
    check_shape("spec", &object["spec"], spec_shape, &mut problems);
    if object["spec"]["action"] == "CUSTOM" && !object["spec"]["provider"]["name"].is_string() {
        problems.push("spec.provider.name: required with action CUSTOM".into());
    }
    problems
}

fn istio_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy().join("istio"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[test]
fn istio_objects_have_the_fields_istio_defines() {
    let files = istio_files();
    assert_eq!(files.len(), 3, "{files:?}");
    for file in files {
        for object in documents(&file) {
            let problems = istio_problems(&object);
            assert!(problems.is_empty(), "{}: {problems:#?}", file.display());
        }
    }
}

#[test]
fn the_istio_check_refuses_what_istio_would() {
    let policy = documents(&deploy().join("istio/authorization-policy.yaml")).remove(0);
    let mesh = documents(&deploy().join("istio/mesh-config.yaml")).remove(0);
    let mut cases = Vec::new();
    let mut typo = mesh.clone();
    typo["spec"]["meshConfig"]["extensionProviders"][0]["envoyExtAuthzGrpc"]["failopen"] =
        json!(false);
    cases.push((typo, "envoyExtAuthzGrpc.failopen: no such field"));
    let mut no_port = mesh.clone();
    no_port["spec"]["meshConfig"]["extensionProviders"][0]["envoyExtAuthzGrpc"]
        .as_object_mut()
        .unwrap()
        .remove("port");
    cases.push((no_port, "envoyExtAuthzGrpc.port: required"));
    let mut action = policy.clone();
    action["spec"]["action"] = json!("EXTERNAL");
    cases.push((action, "spec.action"));
    let mut no_provider = policy.clone();
    no_provider["spec"]
        .as_object_mut()
        .unwrap()
        .remove("provider");
    cases.push((no_provider, "required with action CUSTOM"));
    let mut path = policy;
    path["spec"]["rules"][0]["to"][0]["operation"]["path"] = json!(["/x"]);
    cases.push((path, "operation.path: no such field"));
    let peer = documents(&deploy().join("istio/peer-authentication.yaml")).remove(0);
    let mut mode = peer.clone();
    mode["spec"]["mtls"]["mode"] = json!("REQUIRED");
    cases.push((mode, "spec.mtls.mode"));
    let mut misplaced = peer;
    misplaced["spec"]["mode"] = json!("STRICT");
    cases.push((misplaced, "spec.mode: no such field"));
    for (object, wanted) in cases {
        let problems = istio_problems(&object);
        assert!(
            problems.iter().any(|p| p.contains(wanted)),
            "{wanted} in {problems:?}"
        );
    }
}
