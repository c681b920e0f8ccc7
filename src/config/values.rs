//! How two kinds of configuration value are read and printed: durations
//! (read by `humantime`, printed as configured, e.g. `365days`) and listen
//! addresses (an IP or a host name, with a port).

use std::net::{SocketAddr, ToSocketAddrs};

use serde::{Deserialize, Deserializer, Serializer};

use crate::domain::time::DurationText;

/// `#[serde(with = "values::duration")]`: `"90days"`, `"200ms"`, `"1h"` in,
/// the same spelling out (`config check` prints what was configured, not
/// `humantime`'s `2months 29days 2h 52m 48s`).
pub mod duration {
    use std::time::Duration;

    use super::{Deserializer, DurationText, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&DurationText(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        humantime_serde::deserialize(deserializer)
    }
}

/// `#[serde(with = "values::optional_duration")]`: as [`duration`], absent
/// for none.
pub mod optional_duration {
    use std::time::Duration;

    use super::{Deserializer, DurationText, Serializer};

    pub fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => serializer.collect_str(&DurationText(*value)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        humantime_serde::deserialize(deserializer)
    }
}

/// `#[serde(with = "values::durations")]`: a list of [`duration`]s.
pub mod durations {
    use std::time::Duration;

    use serde::{Deserialize, de::Error, ser::SerializeSeq};

    use super::{Deserializer, DurationText, Serializer};

    pub fn serialize<S: Serializer>(value: &[Duration], serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(value.len()))?;
        for duration in value {
            seq.serialize_element(&DurationText(*duration).to_string())?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<Duration>, D::Error> {
        Vec::<String>::deserialize(deserializer)?
            .iter()
            .map(|text| {
                humantime::parse_duration(text)
                    .map_err(|e| D::Error::custom(format!("{text:?}: {e}")))
            })
            .collect()
    }
}

/// The address `text` (`127.0.0.1:50051`, `[::1]:50051`, `localhost:50051`)
/// names. A host name is resolved now, and its first IPv4 address is taken
/// (else its first address): `localhost` then means `127.0.0.1`, which is
/// what the logs, the defaults and the documentation's examples show.
pub fn resolve_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("`{text}` is not HOST:PORT"));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{text}`: the port is not a number from 0 to 65535"))?;
    if host.is_empty() {
        return Err(format!(
            "`{text}`: no host (for every interface, say 0.0.0.0)"
        ));
    }
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("`{text}`: cannot resolve {host}: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("`{text}`: {host} resolves to no address"))
}

/// `#[serde(deserialize_with = "values::listen")]`.
pub fn listen<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    resolve_listen(&text).map_err(serde::de::Error::custom)
}

/// `#[serde(deserialize_with = "values::optional_listen")]`.
pub fn optional_listen<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    match Option::<String>::deserialize(deserializer)? {
        Some(text) => resolve_listen(&text)
            .map(Some)
            .map_err(serde::de::Error::custom),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_may_be_host_names() {
        assert_eq!(
            resolve_listen("localhost:50051").unwrap(),
            "127.0.0.1:50051".parse().unwrap()
        );
        assert_eq!(
            resolve_listen("[::1]:7").unwrap(),
            "[::1]:7".parse().unwrap()
        );
        assert_eq!(
            resolve_listen("0.0.0.0:50051").unwrap(),
            "0.0.0.0:50051".parse().unwrap()
        );
        for bad in ["localhost", "localhost:x", ":50051", "localhost:70000"] {
            let error = resolve_listen(bad).unwrap_err();
            assert!(error.contains(bad), "{error}");
        }
    }
}
