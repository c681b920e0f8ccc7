//! The OpenAPI description of the JSON/HTTP face (docs/openapi.json),
//! generated from the descriptor set the build compiles from `proto/`: the
//! routes from each RPC's `google.api.http` rule, the schemas from its
//! messages, in the JSON mapping the shipped transcoder prints (protobuf's
//! canonical one: lowerCamelCase names, enums by name, 64-bit integers and
//! times as strings; query parameters keep the proto names). It covers
//! the services deploy/envoy/transcoder.yaml exposes. A test keeps the
//! checked-in file equal to what this generates; after a change to the
//! protos, `scripts/openapi` regenerates it.

use std::collections::BTreeMap;

use prost::Message;
use prost_types::{
    DescriptorProto, EnumDescriptorProto, FileDescriptorSet,
    field_descriptor_proto::{Label, Type},
};
use serde_json::{Map, Value, json};

/// The services the shipped transcoder maps.
const SERVICES: [&str; 3] = [
    "tokenauth.v1.TokenService",
    "tokenauth.v1.CheckService",
    "tokenauth.v1.AuditService",
];

/// The field number of the `google.api.http` option in `MethodOptions`.
const HTTP_OPTION: u64 = 72_295_728;

/// The checked-in description.
const FILE: &str = "docs/openapi.json";

/// An RPC and its HTTP rule.
#[derive(Debug)]
struct Rule {
    service: String,
    method: String,
    input: String,
    output: String,
    verb: &'static str,
    path: String,
    body: String,
}

/// The fields of a protobuf message, as (number, wire type, bytes or
/// varint): just enough to read the options prost-types drops.
fn fields(mut bytes: &[u8]) -> Vec<(u64, Vec<u8>)> {
    fn varint(bytes: &mut &[u8]) -> u64 {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = bytes[0];
            *bytes = &bytes[1..];
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        value
    }
    let mut found = Vec::new();
    while !bytes.is_empty() {
        let key = varint(&mut bytes);
        let (number, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                varint(&mut bytes);
            }
            1 => bytes = &bytes[8..],
            2 => {
                let len = usize::try_from(varint(&mut bytes)).unwrap();
                found.push((number, bytes[..len].to_vec()));
                bytes = &bytes[len..];
            }
            5 => bytes = &bytes[4..],
            other => panic!("wire type {other} in a descriptor"),
        }
    }
    found
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Every RPC of `set` with an HTTP rule.
fn rules(set: &[u8]) -> Vec<Rule> {
    let mut rules = Vec::new();
    for (_, file) in fields(set).into_iter().filter(|(n, _)| *n == 1) {
        let file_fields = fields(&file);
        let package = file_fields
            .iter()
            .find(|(n, _)| *n == 2)
            .map(|(_, b)| text(b))
            .unwrap_or_default();
        for (_, service) in file_fields.iter().filter(|(n, _)| *n == 6) {
            let service_fields = fields(service);
            let name = service_fields
                .iter()
                .find(|(n, _)| *n == 1)
                .map(|(_, b)| text(b))
                .unwrap();
            for (_, method) in service_fields.iter().filter(|(n, _)| *n == 2) {
                let method_fields = fields(method);
                let get = |n: u64| method_fields.iter().find(|(m, _)| *m == n).map(|(_, b)| b);
                let Some(options) = get(4) else { continue };
                let Some((_, rule)) = fields(options).into_iter().find(|(n, _)| *n == HTTP_OPTION)
                else {
                    continue;
                };
                let rule_fields = fields(&rule);
                let (verb, path) = [
                    (2, "get"),
                    (3, "put"),
                    (4, "post"),
                    (5, "delete"),
                    (6, "patch"),
                ]
                .into_iter()
                .find_map(|(n, verb)| {
                    rule_fields
                        .iter()
                        .find(|(m, _)| *m == n)
                        .map(|(_, b)| (verb, text(b)))
                })
                .expect("an HTTP rule with a verb");
                let body = rule_fields
                    .iter()
                    .find(|(n, _)| *n == 7)
                    .map(|(_, b)| text(b))
                    .unwrap_or_default();
                rules.push(Rule {
                    service: format!("{package}.{name}"),
                    method: text(get(1).unwrap()),
                    input: text(get(2).unwrap()).trim_start_matches('.').to_owned(),
                    output: text(get(3).unwrap()).trim_start_matches('.').to_owned(),
                    verb,
                    path,
                    body,
                });
            }
        }
    }
    rules
}

/// Messages and enums by full name.
struct Types {
    messages: BTreeMap<String, DescriptorProto>,
    enums: BTreeMap<String, EnumDescriptorProto>,
}

impl Types {
    fn of(set: &[u8]) -> Self {
        let set = FileDescriptorSet::decode(set).unwrap();
        let mut types = Types {
            messages: BTreeMap::new(),
            enums: BTreeMap::new(),
        };
        for file in set.file {
            let package = file.package().to_owned();
            for e in file.enum_type {
                types.enums.insert(format!("{package}.{}", e.name()), e);
            }
            for m in file.message_type {
                types.add(&package, m);
            }
        }
        types
    }

    fn add(&mut self, scope: &str, message: DescriptorProto) {
        let name = format!("{scope}.{}", message.name());
        for e in &message.enum_type {
            self.enums.insert(format!("{name}.{}", e.name()), e.clone());
        }
        for nested in &message.nested_type {
            self.add(&name, nested.clone());
        }
        self.messages.insert(name, message);
    }
}

/// The schema of one field's value, noting the messages it refers to.
fn value_schema(types: &Types, type_name: &str, kind: Type, refs: &mut Vec<String>) -> Value {
    let name = type_name.trim_start_matches('.');
    match kind {
        Type::String => json!({"type": "string"}),
        Type::Bytes => json!({"type": "string", "format": "byte"}),
        Type::Bool => json!({"type": "boolean"}),
        Type::Int32 | Type::Sint32 | Type::Sfixed32 => {
            json!({"type": "integer", "format": "int32"})
        }
        Type::Uint32 | Type::Fixed32 => json!({"type": "integer", "format": "int64", "minimum": 0}),
        Type::Int64 | Type::Sint64 | Type::Sfixed64 => json!({"type": "string", "format": "int64"}),
        Type::Uint64 | Type::Fixed64 => json!({"type": "string", "format": "uint64"}),
        Type::Double | Type::Float => json!({"type": "number"}),
        Type::Enum => {
            let values: Vec<&str> = types.enums[name].value.iter().map(|v| v.name()).collect();
            json!({"type": "string", "enum": values})
        }
        Type::Message if name == "google.protobuf.Timestamp" => {
            json!({"type": "string", "format": "date-time"})
        }
        Type::Message if name == "google.protobuf.Duration" => {
            json!({"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?s$", "example": "3600s"})
        }
        Type::Message => {
            refs.push(name.to_owned());
            json!({"$ref": format!("#/components/schemas/{name}")})
        }
        Type::Group => panic!("groups are not used"),
    }
}

/// The schema of every message reachable from `roots`.
fn schemas(types: &Types, roots: Vec<String>) -> Map<String, Value> {
    let mut done = Map::new();
    let mut pending = roots;
    while let Some(name) = pending.pop() {
        if done.contains_key(&name) {
            continue;
        }
        let message = &types.messages[&name];
        let mut properties = Map::new();
        for field in &message.field {
            let value = value_schema(types, field.type_name(), field.r#type(), &mut pending);
            let schema = if field.label() == Label::Repeated {
                json!({"type": "array", "items": value})
            } else {
                value
            };
            assert!(
                !field.json_name().is_empty(),
                "protoc names every field's JSON name"
            );
            properties.insert(field.json_name().to_owned(), schema);
        }
        done.insert(name, json!({"type": "object", "properties": properties}));
    }
    done
}

/// The message schemas, and the body of a refused call as the transcoder
/// writes it (`convert_grpc_status`).
fn schemas_with_status(types: &Types, roots: Vec<String>) -> Map<String, Value> {
    let mut all = schemas(types, roots);
    all.insert(
        "Status".to_owned(),
        json!({
            "type": "object",
            "properties": {
                "code": {"type": "integer", "format": "int32", "description": "The gRPC status code."},
                "message": {"type": "string"},
                "details": {"type": "array", "items": {"type": "object"}},
            },
        }),
    );
    all
}

fn actor_headers() -> Vec<Value> {
    tokenauth::api::ACTOR_HEADERS
        .iter()
        .map(|name| {
            let mut schema = json!({"type": "string"});
            if name.ends_with("-role") {
                schema = json!({"type": "string", "enum": ["READ_ONLY", "READ_WRITE", "ADMIN"]});
            }
            json!({
                "name": name,
                "in": "header",
                "required": false,
                "description": "The member the control plane acts for (all three, or none).",
                "schema": schema,
            })
        })
        .collect()
}

/// The OpenAPI description of the rules of `SERVICES` in `set`.
fn openapi(set: &[u8]) -> Value {
    let types = Types::of(set);
    let mut paths: Map<String, Value> = Map::new();
    let mut roots = Vec::new();
    for rule in rules(set)
        .into_iter()
        .filter(|r| SERVICES.contains(&r.service.as_str()))
    {
        let input = &types.messages[&rule.input];
        let path_params: Vec<String> = rule
            .path
            .split('{')
            .skip(1)
            .map(|p| p.split('}').next().unwrap().to_owned())
            .collect();
        let mut parameters: Vec<Value> = path_params
            .iter()
            .map(|p| {
                assert!(
                    input.field.iter().any(|f| f.name() == p),
                    "{}: path parameter {p} is no field of {}",
                    rule.method,
                    rule.input
                );
                json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}})
            })
            .collect();
        if rule.body.is_empty() {
            // Every other field that is not a message (the actor is in headers).
            for field in &input.field {
                let scalar_like = field.r#type() != Type::Message
                    || field.type_name() == ".google.protobuf.Timestamp";
                if scalar_like && !path_params.iter().any(|p| p == field.name()) {
                    let schema =
                        value_schema(&types, field.type_name(), field.r#type(), &mut roots);
                    parameters.push(json!({"name": field.name(), "in": "query", "schema": schema}));
                }
            }
        }
        let management = rule.service != "tokenauth.v1.CheckService";
        if management {
            parameters.extend(actor_headers());
        }
        let mut operation = json!({
            "operationId": rule.method,
            "tags": [rule.service.trim_start_matches("tokenauth.v1.")],
            "parameters": parameters,
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{}", rule.output)}}},
                },
                "default": {
                    "description": "A refused call: the HTTP status of its gRPC code, the code and message in the body.",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}},
                },
            },
        });
        if management {
            operation["security"] = json!([{"controlPlane": []}]);
        }
        if rule.body == "*" {
            operation["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{}", rule.input)}}},
            });
            roots.push(rule.input.clone());
        }
        roots.push(rule.output.clone());
        let entry = paths.entry(rule.path.clone()).or_insert_with(|| json!({}));
        entry[rule.verb] = operation;
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "tokenauth",
            "version": "v1",
            "description": "tokenauth's API as JSON over HTTP, through Envoy's gRPC-JSON transcoder (deploy/envoy/transcoder.yaml). Generated from proto/ by tests/it/openapi.rs; see docs/api-json.md.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "controlPlane": {"type": "http", "scheme": "bearer", "description": "A control-plane credential."},
            },
            "schemas": schemas_with_status(&types, roots),
        },
    })
}

fn checked_in() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(FILE)
}

#[test]
fn the_openapi_description_is_generated_from_the_protos() {
    let generated = serde_json::to_string_pretty(&openapi(tokenauth::proto::FILE_DESCRIPTOR_SET))
        .unwrap()
        + "\n";
    if std::env::var_os("TOKENAUTH_BLESS").is_some() {
        std::fs::write(checked_in(), &generated).unwrap();
    }
    let shipped = std::fs::read_to_string(checked_in()).unwrap();
    assert!(
        shipped == generated,
        "{FILE} differs from what the protos describe: run scripts/openapi"
    );
}

#[test]
fn every_route_the_docs_list_is_described() {
    let description = openapi(tokenauth::proto::FILE_DESCRIPTOR_SET);
    let paths = description["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, verbs) in paths {
        for verb in verbs.as_object().unwrap().keys() {
            operations += 1;
            let route = format!("`{} {path}", verb.to_uppercase());
            let docs = std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/api-json.md"),
            )
            .unwrap();
            assert!(
                docs.contains(&route),
                "docs/api-json.md does not list {route}`"
            );
        }
    }
    // The seventeen routes of the three services the transcoder exposes.
    assert_eq!(operations, 17, "{paths:#?}");
    let issue = &paths["/v1/orgs/{org_id}/tokens"]["post"];
    assert_eq!(issue["operationId"], "IssueToken");
    let list = &paths["/v1/orgs/{org_id}/tokens"]["get"];
    let query: Vec<&str> = list["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["in"] == "query")
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        query,
        [
            "workspace_id",
            "owner_user_id",
            "kind",
            "include_revoked",
            "page_size",
            "page_token"
        ]
    );
    let schemas = &description["components"]["schemas"];
    assert_eq!(
        schemas["tokenauth.v1.Token"]["properties"]["expiresAt"]["format"],
        "date-time"
    );
    assert_eq!(
        schemas["tokenauth.v1.RevokeAllResponse"]["properties"]["revokedCount"]["type"],
        "string"
    );
}

/// The description is valid OpenAPI 3.0 by an independent validator
/// (openapi-spec-validator, pinned in scripts/tools-requirements.txt), which
/// refuses a broken one.
#[test]
fn the_openapi_description_passes_a_validator() {
    let validate = |path: &std::path::Path| {
        std::process::Command::new(crate::tools::tool("openapi-spec-validator"))
            .arg(path)
            .output()
            .unwrap()
    };
    let output = validate(&checked_in());
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains(": OK"));

    let mut broken = openapi(tokenauth::proto::FILE_DESCRIPTOR_SET);
    broken["paths"]["/v1/tokens/{id}"]["get"]["parameters"][0]["required"] = json!(false);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.json");
    std::fs::write(&file, broken.to_string()).unwrap();
    assert!(
        !validate(&file).status.success(),
        "a path parameter must be required"
    );
}
