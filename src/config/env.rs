//! The environment overlay: `TOKENAUTH_*` variables laid over the file's
//! table, field by field, before it becomes a [`Config`].

use std::path::Path;

use super::{Config, ConfigError};

/// Variables that configure the command line rather than the config file
/// (those of the client commands too: an operator's shell that sets them
/// can still run the server), and those of the project's own scripts and
/// tests (scripts/tools, scripts/test), so that a developer's shell that
/// sets them, and the servers the tests start from it, can run the server.
const NOT_CONFIG_VARIABLES: &[&str] = &[
    "TOKENAUTH_CONFIG",
    "TOKENAUTH_LOG",
    "TOKENAUTH_LOG_FORMAT",
    "TOKENAUTH_SERVER",
    "TOKENAUTH_CREDENTIAL_FILE",
    "TOKENAUTH_CA",
    "TOKENAUTH_CLIENT_CERT",
    "TOKENAUTH_CLIENT_KEY",
    "TOKENAUTH_TOOLS_VENV",
    "TOKENAUTH_ENVOY",
    "TOKENAUTH_GRPCURL",
    "TOKENAUTH_KUBERNETES_VALIDATE",
    "TOKENAUTH_HADOLINT",
    "TOKENAUTH_BLESS",
    "TOKENAUTH_SKIP_DISK_FAULT_TESTS",
    "TOKENAUTH_CARGO_DENY_ROOT",
];

impl Config {
    /// The file (if any), overridden by the `TOKENAUTH_*` variables in `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Parse {
                        path: path.to_owned(),
                        message: e.to_string(),
                    })?
            }
            None => toml::Table::new(),
        };
        let mut variables = Vec::new();
        for (name, value) in env {
            let Some(path) = name.strip_prefix("TOKENAUTH_") else {
                continue;
            };
            if NOT_CONFIG_VARIABLES.contains(&name.as_str()) {
                continue;
            }
            set_path(&mut table, path, &value).map_err(|reason| ConfigError::Environment {
                variable: name.clone(),
                reason,
            })?;
            variables.push(name);
        }
        let source_description = match (file, variables.is_empty()) {
            (Some(path), true) => path.display().to_string(),
            (Some(path), false) => format!("{} and {}", path.display(), variables.join(", ")),
            (None, false) => variables.join(", "),
            (None, true) => "defaults".to_owned(),
        };
        table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Merged {
                source_description,
                message: e.to_string(),
            })
    }
}

/// Sets `table[a][b]... = value` for the variable path `A__B`.
fn set_path(table: &mut toml::Table, path: &str, value: &str) -> Result<(), String> {
    let keys: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
    if keys.iter().any(String::is_empty) {
        return Err("is not of the form TOKENAUTH_SECTION__FIELD".into());
    }
    let (last, sections) = keys.split_last().ok_or("names no field")?;
    let mut current = table;
    for key in sections {
        let entry = current
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{key}` is not a section"))?;
    }
    // A TOML value when it is one (5, true, ["a"]); otherwise the text itself.
    let parsed = format!("value = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("value"));
    current.insert(
        last.clone(),
        parsed.unwrap_or_else(|| toml::Value::String(value.to_owned())),
    );
    Ok(())
}
