//! Service registry: sources (etcd, file, memory) turn what they watch into a stream of
//! [`Update`]s — reset, upsert, remove, each with the source's revision — and value decoders
//! turn registry values into [`InstanceSpec`]s.

mod etcd;
mod file;
mod formats;
mod instance;
mod memory;
mod registrar;
mod state_file;
mod update;

pub use etcd::{EtcdSettings, EtcdSource, EtcdTlsPem, WatchedPrefix};
pub use file::{parse_services_file, FileSource};
pub use formats::{decode, sniff, ValueFormat};
pub use instance::{decode_value, DecodeError, InstanceSpec, Scheme, Status};
pub use memory::MemoryRegistry;
pub use registrar::{HealthProbe, RegistrarError, Registration, RegistrationSpec};
pub use state_file::{load_state, save_state, StateFileError};
pub use update::{RegistrySource, SourceEvent, Update, UpdateSink};
