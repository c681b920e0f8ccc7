//! What tests and fuzz targets share, kept out of the production surface:
//! compiled only for the crate's own tests and with the `fuzzing` feature
//! (which the fuzz crate and this crate's integration tests turn on), and
//! hidden from the documentation.

pub mod fixtures;
pub mod fuzzing;
