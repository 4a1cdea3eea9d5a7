//! Gateway configuration: the TOML file model, its validation, and the internal model the
//! rest of the crate uses (enums and durations, never raw strings).

mod error;
mod file;
mod model;
mod validate;

pub use error::{ConfigError, ConfigIssue};
pub use model::{
    AdminSettings, BuiltinStrategy, CertificateSpec, Config, EtcdTls, FilterSpec, HashOn,
    HealthCheckSpec, ListenerTls, LogFormat, LogSettings, PassiveSpec, ProxySettings,
    RegistrySettings, RouteSpec, ServicePolicy, StrategyRef, StrategySpec, UpstreamTlsSpec,
    BUILTIN_STRATEGIES,
};
pub use validate::{parse_cidr, MAX_THREADS};

use std::path::Path;

/// Reads, parses and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// Parses and validates config text; `path` is used for messages and nothing else.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let file = file::parse(path, text)?;
    validate::validate(path, file)
}
