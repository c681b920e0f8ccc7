//! What of deploy/ cannot run here (no container engine, no cluster) is
//! kept from rotting by reading it: every YAML file parses, the example
//! config loads through the real config code, and the settings tokenauth
//! relies on (single writer, probes, non-root, names and ports that agree
//! across files) are where they must be. Envoy's config runs for real in
//! tests/it/envoy/, which proves its behaviour better than reading it could.

use std::path::{Path, PathBuf};

use tokenauth::config::Config;
use yaml_rust2::{Yaml, YamlLoader};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(deploy().join(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

fn yaml(relative: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// The single document of a YAML file.
fn document(relative: &str) -> Yaml {
    let mut docs = yaml(relative);
    assert_eq!(docs.len(), 1, "{relative} holds one document");
    docs.remove(0)
}

fn str_at<'a>(node: &'a Yaml, path: &[&str]) -> &'a str {
    let mut node = node;
    for key in path {
        node = &node[*key];
    }
    node.as_str()
        .unwrap_or_else(|| panic!("{path:?} is not a string: {node:?}"))
}

fn yaml_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            found.push(path);
        }
    }
}

#[test]
fn every_yaml_file_parses_and_kubernetes_objects_say_what_they_are() {
    let mut files = Vec::new();
    yaml_files(&deploy(), &mut files);
    assert!(files.len() >= 8, "{files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let docs =
            YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(!docs.is_empty(), "{}", file.display());
        for doc in &docs {
            assert!(doc.as_hash().is_some(), "{}: not a mapping", file.display());
            // Envoy's configs are not Kubernetes objects.
            if !file.parent().is_some_and(|dir| dir.ends_with("envoy")) {
                assert!(doc["apiVersion"].as_str().is_some(), "{}", file.display());
                assert!(doc["kind"].as_str().is_some(), "{}", file.display());
            }
        }
    }
}

#[test]
fn the_example_config_loads_through_the_real_config_code() {
    let path = deploy().join("kubernetes/tokenauth.toml");
    let config = Config::load(Some(&path), Vec::new()).unwrap();
    let policy = config.policy().unwrap();
    let ext_authz = config.ext_authz.compile(&policy.catalogue).unwrap();
    let permissions: Vec<&str> = ext_authz
        .routes
        .routes()
        .iter()
        .map(|r| r.permission.as_str())
        .collect();
    // The Transformations, Data Catalog (tracking plans) and Test APIs at least.
    for needed in [
        "transformations:read",
        "transformations:write",
        "data_catalog:read",
        "data_catalog:write",
        "tracking_plans:read",
        "tracking_plans:write",
        "test_api:run",
    ] {
        assert!(permissions.contains(&needed), "{needed} in {permissions:?}");
    }
    // The pepper comes from the Secret the StatefulSet mounts.
    let deployment = document("kubernetes/statefulset.yaml");
    let pepper_mount = mount_path(&deployment, "pepper");
    assert_eq!(
        config.pepper_file.as_deref(),
        Some(Path::new(&format!("{pepper_mount}/pepper")))
    );
}

fn container(deployment: &Yaml) -> &Yaml {
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

fn mount_path<'a>(deployment: &'a Yaml, volume: &str) -> &'a str {
    container(deployment)["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|m| m["name"].as_str() == Some(volume))
        .and_then(|m| m["mountPath"].as_str())
        .unwrap_or_else(|| panic!("no mount of {volume}"))
}

#[test]
fn kubernetes_runs_one_non_root_writer_with_probes() {
    let kustomization = document("kubernetes/kustomization.yaml");
    let resources: Vec<&str> = kustomization["resources"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    for file in [
        "namespace.yaml",
        "statefulset.yaml",
        "service.yaml",
        "pdb.yaml",
    ] {
        assert!(resources.contains(&file), "{file} in {resources:?}");
        assert!(deploy().join("kubernetes").join(file).exists());
    }
    let generator = &kustomization["configMapGenerator"][0];
    assert_eq!(generator["files"][0].as_str(), Some("tokenauth.toml"));
    let config_map = generator["name"].as_str().unwrap();

    let deployment = document("kubernetes/statefulset.yaml");
    // sled is single-writer: a StatefulSet of one, never two pods at once.
    assert_eq!(str_at(&deployment, &["kind"]), "StatefulSet");
    assert_eq!(deployment["spec"]["replicas"].as_i64(), Some(1));
    assert_eq!(
        str_at(&deployment, &["spec", "serviceName"]),
        document("kubernetes/service.yaml")["metadata"]["name"]
            .as_str()
            .unwrap()
    );
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_ne!(pod["securityContext"]["runAsUser"].as_i64(), Some(0));
    let container = container(&deployment);
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    // The gRPC port serves TLS; the probes, which speak none, use the
    // health-only port (health.listen).
    serves_tls_with_probes_on_the_health_port(&deployment);
    // Opening a large sled store takes minutes with a small page cache:
    // liveness must not restart the pod before its health port opens.
    let startup = &container["startupProbe"];
    assert_eq!(
        startup["grpc"]["port"],
        container["livenessProbe"]["grpc"]["port"]
    );
    let patience =
        startup["periodSeconds"].as_i64().unwrap() * startup["failureThreshold"].as_i64().unwrap();
    assert!(patience >= 300, "{patience} s before liveness takes over");
    assert!(
        container["resources"]["requests"]["memory"]
            .as_str()
            .is_some()
    );
    assert!(
        container["resources"]["limits"]["memory"]
            .as_str()
            .is_some()
    );

    // The config file the args name is the one the ConfigMap mounts.
    let args: Vec<&str> = container["args"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    let config_path = format!("{}/tokenauth.toml", mount_path(&deployment, "config"));
    assert!(args.contains(&config_path.as_str()), "{args:?}");
    let volumes = pod["volumes"].as_vec().unwrap();
    let volume = |name: &str| {
        volumes
            .iter()
            .find(|v| v["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no volume {name}"))
    };
    assert_eq!(
        volume("config")["configMap"]["name"].as_str(),
        Some(config_map)
    );
    // The data volume is the StatefulSet's own claim.
    let claim = &deployment["spec"]["volumeClaimTemplates"][0];
    assert_eq!(claim["metadata"]["name"].as_str(), Some("data"));
    assert_eq!(
        claim["spec"]["accessModes"][0].as_str(),
        Some("ReadWriteOnce")
    );
    assert_eq!(
        volume("pepper")["secret"]["secretName"].as_str(),
        Some("tokenauth-pepper")
    );
    assert_eq!(mount_path(&deployment, "data"), "/var/lib/tokenauth");
    assert!(read("Dockerfile").contains("TOKENAUTH_DATA_DIR=/var/lib/tokenauth/data"));

    let service = document("kubernetes/service.yaml");
    assert_eq!(service["spec"]["ports"][0]["port"].as_i64(), Some(50051));
    assert_eq!(service["spec"]["ports"][0]["name"].as_str(), Some("grpc"));
    let pdb = document("kubernetes/pdb.yaml");
    assert_eq!(str_at(&pdb, &["kind"]), "PodDisruptionBudget");
}

#[test]
fn the_dockerfile_builds_in_two_stages_and_runs_as_non_root() {
    let dockerfile = read("Dockerfile");
    let stages = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .count();
    assert!(stages >= 2, "multi-stage");
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    assert!(
        !user.starts_with('0') && !user.starts_with("root"),
        "{user}"
    );
    assert!(dockerfile.contains("VOLUME [\"/var/lib/tokenauth\"]"));
    assert!(dockerfile.contains("EXPOSE 50051"));
    assert!(dockerfile.contains("--locked"));
}

/// The container serves TLS from the mounted tokenauth-tls Secret, and its
/// probes go to the health-only plaintext port that `health.listen` opens.
fn serves_tls_with_probes_on_the_health_port(deployment: &Yaml) {
    let tls = mount_path(deployment, "tls");
    let volume = deployment["spec"]["template"]["spec"]["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str() == Some("tls"))
        .expect("a tls volume");
    assert_eq!(
        volume["secret"]["secretName"].as_str(),
        Some("tokenauth-tls")
    );
    let env: Vec<(String, String)> = [
        "TOKENAUTH_TLS__CERT_FILE",
        "TOKENAUTH_TLS__KEY_FILE",
        "TOKENAUTH_HEALTH__LISTEN",
    ]
    .iter()
    .map(|name| ((*name).to_owned(), env_value(deployment, name).to_owned()))
    .collect();
    let config = Config::load(Some(&deploy().join("kubernetes/tokenauth.toml")), env).unwrap();
    config.policy().unwrap();
    assert_eq!(
        config.tls.cert_file.as_deref(),
        Some(Path::new(&format!("{tls}/tls.crt")))
    );
    assert_eq!(
        config.tls.key_file.as_deref(),
        Some(Path::new(&format!("{tls}/tls.key")))
    );
    let health_port = i64::from(config.health.listen.expect("health.listen").port());
    let ports = container(deployment)["ports"].as_vec().unwrap();
    assert!(ports.iter().any(|p| p["name"].as_str() == Some("health")
        && p["containerPort"].as_i64() == Some(health_port)));
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(
            container(deployment)[probe]["grpc"]["port"].as_i64(),
            Some(health_port),
            "{probe}"
        );
    }
}

/// What the real Envoy cannot show (tests/it/envoy/ points it at loopback):
/// that the shipped config points the cluster ext_authz uses at the Service
/// the Kubernetes manifests create, on its port.
#[test]
fn envoy_asks_the_tokenauth_service_of_the_kubernetes_manifests() {
    let envoy = document("envoy/envoy.yaml");
    let filters =
        envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            ["http_filters"]
            .as_vec()
            .unwrap();
    let ext_authz = filters
        .iter()
        .find(|f| f["name"].as_str() == Some("envoy.filters.http.ext_authz"))
        .expect("an ext_authz filter");
    let cluster_name = str_at(
        &ext_authz["typed_config"],
        &["grpc_service", "envoy_grpc", "cluster_name"],
    );
    let cluster = envoy["static_resources"]["clusters"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str() == Some(cluster_name))
        .unwrap_or_else(|| panic!("no cluster {cluster_name}"));
    let address = &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"];
    assert_eq!(address["address"].as_str(), Some(service_host().as_str()));
    let service = document("kubernetes/service.yaml");
    assert_eq!(
        address["port_value"].as_i64(),
        service["spec"]["ports"][0]["port"].as_i64()
    );
    // ...over TLS, verifying tokenauth's certificate and name.
    let tls = &cluster["transport_socket"]["typed_config"];
    assert_eq!(
        tls["@type"].as_str(),
        Some("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext")
    );
    assert_eq!(tls["sni"].as_str(), Some(service_host().as_str()));
    let validation = &tls["common_tls_context"]["validation_context"];
    assert!(validation["trusted_ca"]["filename"].as_str().is_some());
    assert_eq!(
        validation["match_typed_subject_alt_names"][0]["matcher"]["exact"].as_str(),
        Some(service_host().as_str())
    );
}

/// tokenauth's address in the cluster: the Service in the kustomization's namespace.
fn service_host() -> String {
    let namespace = document("kubernetes/kustomization.yaml")["namespace"]
        .as_str()
        .unwrap()
        .to_owned();
    let service = document("kubernetes/service.yaml")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    format!("{service}.{namespace}.svc.cluster.local")
}

#[test]
fn istio_names_tokenauth_as_a_custom_provider() {
    let mesh = document("istio/mesh-config.yaml");
    let provider = &mesh["spec"]["meshConfig"]["extensionProviders"][0];
    let grpc = &provider["envoyExtAuthzGrpc"];
    assert_eq!(grpc["service"].as_str(), Some(service_host().as_str()));
    assert_eq!(grpc["port"].as_i64(), Some(50051));
    assert_eq!(grpc["failOpen"].as_bool(), Some(false));
    // tokenauth serves its sidecar plaintext under Istio: mutual TLS is
    // mandatory for its namespace.
    let mtls = document("istio/peer-authentication.yaml");
    assert_eq!(str_at(&mtls, &["kind"]), "PeerAuthentication");
    assert_eq!(str_at(&mtls, &["metadata", "namespace"]), "tokenauth");
    assert_eq!(str_at(&mtls, &["spec", "mtls", "mode"]), "STRICT");
    assert!(grpc["timeout"].as_str().is_some());

    let policy = document("istio/authorization-policy.yaml");
    assert_eq!(str_at(&policy, &["kind"]), "AuthorizationPolicy");
    assert_eq!(str_at(&policy, &["spec", "action"]), "CUSTOM");
    assert_eq!(
        policy["spec"]["provider"]["name"].as_str(),
        provider["name"].as_str()
    );
}

/// The value of environment variable `name` in the first container.
fn env_value<'a>(deployment: &'a Yaml, name: &str) -> &'a str {
    container(deployment)["env"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|e| e["name"].as_str() == Some(name))
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("no env {name}"))
}

#[test]
fn the_postgresql_variant_runs_several_replicas_without_volumes() {
    let kustomization = document("kubernetes-postgres/kustomization.yaml");
    let resources: Vec<&str> = kustomization["resources"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(resources, ["../kubernetes", "deployment.yaml"]);
    let patches: Vec<&str> = kustomization["patches"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|p| p["patch"].as_str())
        .collect();
    assert!(
        patches
            .iter()
            .any(|p| p.contains("$patch: delete") && p.contains("kind: StatefulSet")),
        "the single-writer StatefulSet is removed"
    );

    let deployment = document("kubernetes-postgres/deployment.yaml");
    assert_eq!(str_at(&deployment, &["kind"]), "Deployment");
    assert!(deployment["spec"]["replicas"].as_i64().unwrap() >= 2);
    assert!(deployment["spec"]["volumeClaimTemplates"].is_badvalue());
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    // The same labels and port as the Service built from the base selects.
    let sled = document("kubernetes/statefulset.yaml");
    assert_eq!(
        deployment["spec"]["selector"], sled["spec"]["selector"],
        "the base Service selects these pods"
    );
    assert_eq!(container(&deployment)["ports"], container(&sled)["ports"]);

    // The base config file, with the variables the Deployment sets, names a
    // PostgreSQL store and the mounted password and pepper files.
    let env: Vec<(String, String)> = [
        "TOKENAUTH_STORE",
        "TOKENAUTH_POSTGRES__PASSWORD_FILE",
        "TOKENAUTH_POSTGRES__CA_FILE",
    ]
    .iter()
    .map(|name| ((*name).to_owned(), env_value(&deployment, name).to_owned()))
    .collect();
    assert_eq!(
        tokenauth::config::redact_url_password(&env[0].1),
        env[0].1,
        "no password in the URL"
    );
    let config = Config::load(Some(&deploy().join("kubernetes/tokenauth.toml")), env).unwrap();
    config.policy().unwrap();
    assert!(matches!(
        config.store_kind().unwrap(),
        tokenauth::config::StoreKind::Postgres(_)
    ));
    assert_eq!(
        config.postgres.password_file.as_deref(),
        Some(Path::new(&format!(
            "{}/password",
            mount_path(&deployment, "db")
        )))
    );
    assert_eq!(
        config.pepper_file.as_deref(),
        Some(Path::new(&format!(
            "{}/pepper",
            mount_path(&deployment, "pepper")
        )))
    );
    // TLS to the database, with the CA from the same Secret.
    assert_eq!(
        config.postgres.ca_file.as_deref(),
        Some(Path::new(&format!(
            "{}/ca.pem",
            mount_path(&deployment, "db")
        )))
    );
    serves_tls_with_probes_on_the_health_port(&deployment);
}
