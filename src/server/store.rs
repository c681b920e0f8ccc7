//! Opening the store the configuration names: sled in a private data
//! directory, or PostgreSQL with the settings and secrets read from files.

use std::sync::Arc;

use super::error::ServerError;
use crate::{
    config::{Config, StoreKind},
    store::{
        Store,
        postgres::{FeedTiming, PostgresSettings, PostgresStore},
        sled::SledStore,
    },
};

/// Opens the store `config` names: sled in the data directory (created with
/// mode 0700), or PostgreSQL (connecting and bringing its schema up to date).
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, ServerError> {
    match config.store_kind()? {
        StoreKind::Sled => {
            create_private_dir(&config.data_dir)?;
            make_data_dir_private(&config.data_dir)?;
            Ok(Arc::new(SledStore::open_with_cache(
                &config.data_dir.join("db"),
                config.sled.cache_capacity,
            )?))
        }
        StoreKind::Postgres(url) => Ok(Arc::new(
            PostgresStore::open(&postgres_settings(config, url)?).await?,
        )),
    }
}

/// The PostgreSQL settings of `config`, with the password read from its file.
pub fn postgres_settings(config: &Config, url: String) -> Result<PostgresSettings, ServerError> {
    let pg = &config.postgres;
    let password = match &pg.password_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|source| ServerError::File {
                    path: path.clone(),
                    source,
                })?
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
        ),
        None => None,
    };
    let ca_pem = match &pg.ca_file {
        Some(path) => Some(std::fs::read(path).map_err(|source| ServerError::File {
            path: path.clone(),
            source,
        })?),
        None => None,
    };
    Ok(PostgresSettings {
        url,
        password,
        ca_pem,
        pool_size: pg.pool_size,
        connect_timeout: pg.connect_timeout,
        feed: FeedTiming {
            poll_interval: pg.poll_interval,
            max_staleness: pg.max_staleness,
            retention: pg.revocation_log_retention,
        },
    })
}

fn create_private_dir(path: &std::path::Path) -> Result<(), ServerError> {
    crate::private_fs::create_dir(path).map_err(|source| ServerError::DataDir {
        path: path.to_owned(),
        source,
    })
}

/// A data directory that others can read (one copied or restored by an
/// older version, or given group access by a volume mount) is made private
/// rather than refused: the server owns it, nothing else should read it (a
/// consistent copy comes from `tokenauth backup`), and a refusal would turn
/// an exposure into an outage. One that cannot be changed stops the start.
fn make_data_dir_private(path: &std::path::Path) -> Result<(), ServerError> {
    match crate::private_fs::tighten_dir(path) {
        Ok(None) => Ok(()),
        Ok(Some(mode)) => {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{mode:o}"),
                "the data directory was readable by other users; its mode is now 0700"
            );
            Ok(())
        }
        Err(source) => Err(ServerError::DataDir {
            path: path.to_owned(),
            source: std::io::Error::new(
                source.kind(),
                format!(
                    "other users can read it, and making it private (mode 0700) failed: \
                     {source}; run `chmod 700` on it as its owner"
                ),
            ),
        }),
    }
}
