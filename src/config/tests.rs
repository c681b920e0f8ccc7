//! The configuration's unit tests: defaults, the documented file, the
//! environment overlay, validation messages and redaction.

use super::*;

#[test]
fn defaults_need_no_file_and_are_valid() {
    let config = Config::from_toml("").unwrap();
    assert_eq!(config.listen.to_string(), "127.0.0.1:50051");
    assert!(config.policy().is_ok());
    assert_eq!(config.pepper_path(), PathBuf::from("data/pepper"));
}

#[test]
fn a_sled_cache_too_small_to_open_is_refused_by_name() {
    let error = Config::from_toml("[sled]\ncache_capacity = 0\n")
        .unwrap()
        .policy()
        .unwrap_err()
        .to_string();
    assert!(error.contains("sled.cache_capacity"), "{error}");
}

#[test]
fn leak_report_budgets_below_one_full_report_are_refused_by_name() {
    for (toml, field) in [
        (
            "[leak_reports]\nmax_secrets_per_peer_per_minute = 0\n",
            "max_secrets_per_peer_per_minute",
        ),
        (
            "[leak_reports]\nmax_secrets_per_peer_per_minute = 999\n",
            "max_secrets_per_peer_per_minute",
        ),
        (
            "[leak_reports]\nmax_secrets_per_minute = 1999\n",
            "leak_reports.max_secrets_per_minute",
        ),
        (
            "[secret_scanning]\nmax_matches_per_minute = 999\n",
            "secret_scanning.max_matches_per_minute",
        ),
    ] {
        let error = Config::from_toml(toml)
            .unwrap()
            .policy()
            .unwrap_err()
            .to_string();
        assert!(error.contains(field), "{toml}: {error}");
    }
}

#[test]
fn a_secret_scanning_listener_without_keys_is_refused_by_name() {
    let on = "[secret_scanning]\nlisten = \"127.0.0.1:0\"\n";
    let error = Config::from_toml(on)
        .unwrap()
        .policy()
        .unwrap_err()
        .to_string();
    assert!(error.contains("secret_scanning.keys_file"), "{error}");
    let with_keys = format!("{on}keys_file = \"/etc/tokenauth/github-keys.json\"\n");
    assert!(Config::from_toml(&with_keys).unwrap().policy().is_ok());
    assert!(
        Config::default().secret_scanning.listen.is_none(),
        "off by default"
    );
}

/// The configuration page's "whole file, with every default" is what the
/// code defaults to.
#[test]
fn the_configuration_page_lists_the_defaults() {
    let page = include_str!("../../docs/operate/configuration.md");
    let block = page
        .split_once("The whole file, with every default:\n\n```toml\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(block, _)| block)
        .expect("the configuration block of docs/operate/configuration.md");
    let documented = Config::from_toml(block).unwrap();
    assert_eq!(
        serde_json::to_value(&documented).unwrap(),
        serde_json::to_value(Config::default()).unwrap()
    );
}

#[test]
fn durations_read_as_human_text() {
    let config = Config::from_toml("[tokens.personal]\nmax_lifetime = \"90days\"\n").unwrap();
    let policy = config.policy().unwrap();
    assert_eq!(
        policy.lifetime.personal_max,
        Some(Duration::from_secs(90 * 86400))
    );
    assert_eq!(
        policy.lifetime.service_max,
        Some(Duration::from_secs(365 * 86400))
    );
    let unlimited = Config::from_toml("[tokens.service]\nmax_lifetime = \"0s\"\n").unwrap();
    assert_eq!(unlimited.policy().unwrap().lifetime.service_max, None);
}

#[test]
fn environment_overrides_the_file_field_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokenauth.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:1\"\n[cache]\ncapacity = 10\nnegative_capacity = 20\n",
    )
    .unwrap();
    let env = [
        ("TOKENAUTH_CACHE__CAPACITY", "30"),
        ("TOKENAUTH_TOKENS__PERSONAL__MAX_LIFETIME", "90days"),
        ("TOKENAUTH_TOKENS__PERSONAL__REQUIRE_EXPIRY", "true"),
        ("TOKENAUTH_LOG", "debug"),
        // The test tools' own variable, set in a developer's shell.
        ("TOKENAUTH_TOOLS_VENV", "/opt/tools"),
        ("UNRELATED", "x"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let config = Config::load(Some(&file), env).unwrap();
    assert_eq!(config.listen.to_string(), "127.0.0.1:1");
    assert_eq!(config.cache.capacity, 30);
    assert_eq!(config.cache.negative_capacity, 20);
    assert!(config.tokens.personal.require_expiry);
    assert_eq!(
        config.tokens.personal.max_lifetime,
        Duration::from_secs(90 * 86400)
    );

    let wrong = [("TOKENAUTH_CACHE__CAPACTY".to_owned(), "1".to_owned())];
    let err = Config::load(None, wrong).unwrap_err().to_string();
    assert!(
        err.contains("capacty") && err.contains("TOKENAUTH_CACHE__CAPACTY"),
        "{err}"
    );
    let bad = [("TOKENAUTH_LISTEN__PORT".to_owned(), "1".to_owned())];
    assert!(Config::load(None, bad).is_err());
}

#[test]
fn the_effective_config_prints_without_credential_hashes() {
    let mut config = Config::default();
    config.control_plane.credentials.push(CredentialConfig {
        name: "cp".into(),
        sha256: "ab".repeat(32),
    });
    let printed = toml::to_string(&config.redacted()).unwrap();
    assert!(!printed.contains(&"ab".repeat(32)));
    assert!(printed.contains("[tokens.personal]"), "{printed}");
    // What is printed reads back as the same configuration.
    let reparsed = Config::from_toml(&toml::to_string(&Config::default()).unwrap()).unwrap();
    assert_eq!(reparsed.cache.capacity, Config::default().cache.capacity);
    assert_eq!(
        reparsed.tokens.personal.max_lifetime,
        Config::default().tokens.personal.max_lifetime
    );
}

#[test]
fn control_plane_credentials_are_hashes() {
    let config = Config::from_toml(&format!(
        "[[control_plane.credentials]]\nname = \"dashboard\"\nsha256 = \"{}\"\n",
        "ab".repeat(32)
    ))
    .unwrap();
    let policy = config.policy().unwrap();
    assert_eq!(policy.control_plane[0].name, "dashboard");
    assert_eq!(policy.control_plane[0].sha256, [0xab; 32]);
}

#[test]
fn errors_name_the_field() {
    let unknown = Config::from_toml("[cache]\ncapacty = 5\n").unwrap_err();
    assert!(unknown.contains("capacty"), "{unknown}");
    let wrong_type = Config::from_toml("listen = 5\n").unwrap_err();
    assert!(wrong_type.contains("listen"), "{wrong_type}");
    let invalid = |toml: &str| {
        Config::from_toml(toml)
            .unwrap()
            .policy()
            .unwrap_err()
            .to_string()
    };
    let zero = invalid("[cache]\ncapacity = 0\n");
    assert!(zero.contains("cache.capacity"), "{zero}");
    let bad_catalogue = invalid("[permissions]\norganization = [\"x\"]\n");
    assert!(bad_catalogue.contains("permissions"), "{bad_catalogue}");
    let bad_role = invalid("[roles]\nadmin = [\"nope:read\"]\n");
    assert!(bad_role.contains("roles"), "{bad_role}");
    let in_clear =
        invalid("[[control_plane.credentials]]\nname = \"dashboard\"\nsha256 = \"tkcpl_secret\"\n");
    assert!(
        in_clear.contains("control_plane.credentials.sha256"),
        "{in_clear}"
    );
    assert!(
        !in_clear.contains("tkcpl_secret"),
        "never echo what may be a secret"
    );
}

#[test]
fn printed_store_urls_never_show_a_password() {
    for (url, shown) in [
        ("sled", "sled"),
        ("postgres://u@db:5432/t", "postgres://u@db:5432/t"),
        ("postgres://u:s3cret@db/t", "postgres://u:(redacted)@db/t"),
        (
            "postgresql://db/t?sslmode=disable&password=s3cret",
            "postgresql://db/t?sslmode=disable&password=(redacted)",
        ),
    ] {
        assert_eq!(redact_url_password(url), shown);
    }
    let config = Config {
        store: "postgres://u:s3cret@db/t".into(),
        ..Config::default()
    };
    let printed = toml::to_string(&config.redacted()).unwrap();
    assert!(!printed.contains("s3cret"), "{printed}");
    assert_eq!(
        config.store_kind().unwrap(),
        StoreKind::Postgres("postgres://u:s3cret@db/t".into())
    );
    let wrong = Config {
        store: "mysql://db".into(),
        ..Config::default()
    };
    assert!(wrong.store_kind().is_err());
}
/// Review (issue 12, item 15): a password parameter whose name is
/// percent-encoded, in any of its letters and in either case of hex
/// digit, is still a password to the client, and is hidden.
#[test]
fn printed_store_urls_hide_percent_encoded_password_parameters() {
    for name in [
        "pass%77ord",
        "%70assword",
        "passwor%64",
        "PASS%57ORD",
        "pa%73%73word",
        "%70%61%73%73%77%6f%72%64",
        "%70%61%73%73%77%6F%72%64",
    ] {
        let url = format!("postgres://u@db:5432/t?sslmode=disable&{name}=s3cret");
        let shown = redact_url_password(&url);
        assert!(!shown.contains("s3cret"), "{url} printed as {shown}");
        assert!(shown.contains("sslmode=disable"), "{shown}");
        // Only what the client reads as `password` (case-sensitively)
        // configures one; the redaction hides the wider set.
        if let Ok(parsed) = url.parse::<tokio_postgres::Config>() {
            assert_eq!(parsed.get_password(), Some(&b"s3cret"[..]), "{url}");
        }
    }
    let config = Config {
        store: "postgres://u@db/t?pass%77ord=s3cret".into(),
        ..Config::default()
    };
    let printed = toml::to_string(&config.redacted()).unwrap();
    assert!(!printed.contains("s3cret"), "{printed}");
}

/// Review: the PostgreSQL client takes everything up to the last `@`
/// as the user part, so a password may hold `/`, `?` or `#`; the
/// redaction must hide it wherever the client would find it.
#[test]
fn printed_store_urls_hide_passwords_with_url_delimiters() {
    for password in ["s3/cret", "s3?cret", "s3#cret", "s3/c?r#et"] {
        let url = format!("postgres://u:{password}@db:5432/t");
        let parsed: tokio_postgres::Config = url.parse().unwrap();
        assert_eq!(parsed.get_password(), Some(password.as_bytes()), "{url}");
        let shown = redact_url_password(&url);
        assert!(!shown.contains(password), "{url} printed as {shown}");
    }
}
