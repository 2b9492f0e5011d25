//! The messages of Hydra's queue-runner protocol (`runner.v1`,
//! `nix.store.v1`, `nix.store.derivation.v1`), written by hand from the
//! field tables in `docs/hydra-queue-runner.md` of the shared material
//! (no `.proto` file, no generated code). Tags and types are the wire
//! contract; the names follow the tables.
//!
//! Every type also serialises to protobuf's canonical JSON mapping
//! (lowerCamelCase names, 64-bit integers as strings, bytes as base64,
//! enums by name, fields at their default left out) so the recorded runs
//! can be compared field by field, and so the log and `airlockctl` can
//! show a message as the recordings do.
//!
//! The presigned-upload messages are left out: airlock does not join a
//! runner that uses presigned uploads (the runner then never takes the
//! builder's outputs itself).

use std::collections::HashMap;

use serde::Serialize;

/// What the canonical JSON mapping needs beyond serde's defaults.
mod json {
    use base64::Engine as _;
    use serde::ser::{SerializeMap, SerializeSeq};
    use serde::Serializer;
    use std::collections::HashMap;

    pub fn is_default<T: Default + PartialEq>(t: &T) -> bool {
        *t == T::default()
    }

    pub fn int_str<T: ToString, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn opt_int_str<T: ToString, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(&v.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn b64<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn b64_vec<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for b in v {
            seq.serialize_element(&base64::engine::general_purpose::STANDARD.encode(b))?;
        }
        seq.end()
    }

    pub fn b64_map<S: Serializer>(v: &HashMap<String, Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(v.len()))?;
        for (k, b) in v {
            m.serialize_entry(k, &base64::engine::general_purpose::STANDARD.encode(b))?;
        }
        m.end()
    }
}

/// A protobuf enum: its numbers and, for the JSON mapping, its names.
macro_rules! proto_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $n:literal $(=> $json:literal)?),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
        #[repr(i32)]
        pub enum $name {
            $($variant = $n),*
        }
        impl $name {
            /// The name the `.proto` gives the value.
            pub fn name(self) -> &'static str {
                match self {
                    $($name::$variant => proto_enum!(@name $variant $($json)?)),*
                }
            }
            /// The name of a number as it came over the wire; a number
            /// this version does not know is shown as the number.
            pub fn name_of(n: i32) -> String {
                $name::try_from(n)
                    .map(|v| v.name().to_owned())
                    .unwrap_or_else(|_| n.to_string())
            }
            #[allow(dead_code)]
            fn ser<S: serde::Serializer>(n: &i32, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&$name::name_of(*n))
            }
        }
    };
    (@name $variant:ident $json:literal) => { $json };
    (@name $variant:ident) => { stringify!($variant) };
}

proto_enum!(
    /// `runner.v1.StepStatus` (the proto spells `SeningInputs` so).
    StepStatus {
        Preparing = 0,
        Connecting = 1,
        SeningInputs = 2,
        Building = 3,
        WaitingForLocalSlot = 4,
        ReceivingOutputs = 5,
        PostProcessing = 6,
    }
);

proto_enum!(
    /// `runner.v1.BuildResultState`; `BuildFailure` is the default, so a
    /// success must be set explicitly.
    BuildResultState {
        BuildFailure = 0,
        Success = 1,
        PreparingFailure = 2,
        ImportFailure = 3,
        UploadFailure = 4,
        PostProcessingFailure = 5,
        TimedOutFailure = 6,
        LogLimitFailure = 7,
        NarSizeLimitFailure = 8,
    }
);

proto_enum!(
    /// `nix.store.v1.Hash.Algorithm`.
    HashAlgorithm {
        Sha256 = 0 => "SHA256",
        Sha512 = 1 => "SHA512",
        Sha1 = 2 => "SHA1",
        Md5 = 3 => "MD5",
        Blake3 = 4 => "BLAKE3",
    }
);

proto_enum!(
    /// `nix.store.v1.ContentAddress.Method`.
    ContentAddressMethod {
        Text = 0 => "TEXT",
        Flat = 1 => "FLAT",
        NixArchive = 2 => "NIX_ARCHIVE",
    }
);

// ---- nix.store.v1 ----

/// A store path's base name, `<hash>-<name>`, never with the store dir.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StorePath {
    #[prost(string, tag = "1")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub path: String,
}

impl StorePath {
    pub fn new(base: impl Into<String>) -> StorePath {
        StorePath { path: base.into() }
    }
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StorePaths {
    #[prost(message, repeated, tag = "1")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<StorePath>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RelativeStorePath {
    #[prost(message, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_path: Option<StorePath>,
    #[prost(string, tag = "2")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub sub_path: String,
}

/// A hash: the raw digest bytes, never text.
#[derive(Clone, PartialEq, Eq, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Hash {
    #[prost(enumeration = "HashAlgorithm", tag = "1")]
    #[serde(
        skip_serializing_if = "json::is_default",
        serialize_with = "HashAlgorithm::ser"
    )]
    pub algorithm: i32,
    #[prost(bytes = "vec", tag = "2")]
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "json::b64")]
    pub digest: Vec<u8>,
}

impl Hash {
    pub fn sha256(digest: [u8; 32]) -> Hash {
        Hash {
            algorithm: HashAlgorithm::Sha256 as i32,
            digest: digest.to_vec(),
        }
    }
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContentAddress {
    #[prost(enumeration = "ContentAddressMethod", tag = "1")]
    #[serde(
        skip_serializing_if = "json::is_default",
        serialize_with = "ContentAddressMethod::ser"
    )]
    pub method: i32,
    #[prost(message, optional, tag = "2")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<Hash>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContentAddressMethodAlgorithm {
    #[prost(enumeration = "ContentAddressMethod", tag = "1")]
    #[serde(
        skip_serializing_if = "json::is_default",
        serialize_with = "ContentAddressMethod::ser"
    )]
    pub method: i32,
    #[prost(enumeration = "HashAlgorithm", tag = "2")]
    #[serde(
        skip_serializing_if = "json::is_default",
        serialize_with = "HashAlgorithm::ser"
    )]
    pub algorithm: i32,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Signature {
    #[prost(string, tag = "1")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub key_name: String,
    #[prost(string, tag = "2")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub sig: String,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UnkeyedValidPathInfo {
    #[prost(message, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deriver: Option<StorePath>,
    #[prost(message, optional, tag = "2")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nar_hash: Option<Hash>,
    #[prost(message, repeated, tag = "3")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<StorePath>,
    #[prost(int64, optional, tag = "4")]
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "json::opt_int_str"
    )]
    pub registration_time: Option<i64>,
    #[prost(uint64, tag = "5")]
    #[serde(
        skip_serializing_if = "json::is_default",
        serialize_with = "json::int_str"
    )]
    pub nar_size: u64,
    #[prost(bool, tag = "6")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub ultimate: bool,
    #[prost(message, repeated, tag = "7")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub signatures: Vec<Signature>,
    #[prost(message, optional, tag = "8")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<ContentAddress>,
    #[prost(string, tag = "9")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub store_dir: String,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidPathInfo {
    #[prost(message, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<StorePath>,
    #[prost(message, optional, tag = "2")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<UnkeyedValidPathInfo>,
}

// ---- nix.store.derivation.v1 ----

#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Unit {}

/// One output of a resolved derivation.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Output {
    #[prost(oneof = "output::Output", tags = "1, 2, 3, 4, 5")]
    #[serde(flatten)]
    pub output: Option<output::Output>,
}

pub mod output {
    use serde::Serialize;

    #[derive(Clone, PartialEq, prost::Oneof, Serialize)]
    #[serde(rename_all = "camelCase")]
    pub enum Output {
        #[prost(message, tag = "1")]
        InputAddressed(super::StorePath),
        #[prost(message, tag = "2")]
        CaFixed(super::ContentAddress),
        #[prost(message, tag = "3")]
        Deferred(super::Unit),
        #[prost(message, tag = "4")]
        CaFloating(super::ContentAddressMethodAlgorithm),
        #[prost(message, tag = "5")]
        Impure(super::ContentAddressMethodAlgorithm),
    }
}

/// A force-resolved BasicDerivation: inputs are store paths only.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Basic {
    #[prost(string, tag = "1")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub name: String,
    #[prost(map = "string, message", tag = "2")]
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub outputs: HashMap<String, Output>,
    #[prost(message, repeated, tag = "3")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<StorePath>,
    #[prost(bytes = "vec", tag = "4")]
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "json::b64")]
    pub platform: Vec<u8>,
    #[prost(bytes = "vec", tag = "5")]
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "json::b64")]
    pub builder: Vec<u8>,
    #[prost(bytes = "vec", repeated, tag = "6")]
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "json::b64_vec"
    )]
    pub args: Vec<Vec<u8>>,
    #[prost(map = "string, bytes", tag = "7")]
    #[serde(
        skip_serializing_if = "HashMap::is_empty",
        serialize_with = "json::b64_map"
    )]
    pub env: HashMap<String, Vec<u8>>,
    #[prost(string, optional, tag = "8")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub structured_attrs: Option<String>,
}

// ---- runner.v1 ----

#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Empty {}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionCheckRequest {
    #[prost(string, tag = "1")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub version: String,
    #[prost(string, tag = "2")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub machine_id: String,
    #[prost(string, tag = "3")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub hostname: String,
    #[prost(string, tag = "4")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub store_dir: String,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionCheckResponse {
    #[prost(bool, tag = "1")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub compatible: bool,
    #[prost(string, tag = "2")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub server_version: String,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuilderRequest {
    #[prost(oneof = "builder_request::Message", tags = "1, 2")]
    #[serde(flatten)]
    pub message: Option<builder_request::Message>,
}

pub mod builder_request {
    use serde::Serialize;

    #[derive(Clone, PartialEq, prost::Oneof, Serialize)]
    #[serde(rename_all = "camelCase")]
    pub enum Message {
        #[prost(message, tag = "1")]
        Join(super::JoinMessage),
        #[prost(message, tag = "2")]
        Ping(super::PingMessage),
    }
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinMessage {
    #[prost(string, tag = "1")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub machine_id: String,
    #[prost(string, repeated, tag = "2")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub systems: Vec<String>,
    #[prost(string, tag = "3")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub hostname: String,
    #[prost(uint32, tag = "4")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub cpu_count: u32,
    #[prost(float, tag = "5")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub bogomips: f32,
    #[prost(float, tag = "6")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub speed_factor: f32,
    #[prost(uint32, tag = "7")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub max_jobs: u32,
    #[prost(float, tag = "8")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub build_dir_avail_threshold: f32,
    #[prost(float, tag = "9")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub store_avail_threshold: f32,
    #[prost(float, tag = "10")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub load1_threshold: f32,
    #[prost(float, tag = "11")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub cpu_psi_threshold: f32,
    #[prost(float, tag = "12")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub mem_psi_threshold: f32,
    #[prost(float, optional, tag = "13")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io_psi_threshold: Option<f32>,
    #[prost(uint64, tag = "14")]
    #[serde(
        skip_serializing_if = "json::is_default",
        serialize_with = "json::int_str"
    )]
    pub total_mem: u64,
    #[prost(string, repeated, tag = "15")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub supported_features: Vec<String>,
    #[prost(string, repeated, tag = "16")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mandatory_features: Vec<String>,
    #[prost(bool, tag = "17")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub cgroups: bool,
    #[prost(string, repeated, tag = "18")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub substituters: Vec<String>,
    #[prost(bool, tag = "19")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub use_substitutes: bool,
    #[prost(string, tag = "20")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub nix_version: String,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pressure {
    #[prost(float, tag = "1")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub avg10: f32,
    #[prost(float, tag = "2")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub avg60: f32,
    #[prost(float, tag = "3")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub avg300: f32,
    #[prost(uint64, tag = "4")]
    #[serde(
        skip_serializing_if = "json::is_default",
        serialize_with = "json::int_str"
    )]
    pub total: u64,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PressureState {
    #[prost(message, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_some: Option<Pressure>,
    #[prost(message, optional, tag = "2")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_some: Option<Pressure>,
    #[prost(message, optional, tag = "3")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_full: Option<Pressure>,
    #[prost(message, optional, tag = "4")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io_some: Option<Pressure>,
    #[prost(message, optional, tag = "5")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub io_full: Option<Pressure>,
    #[prost(message, optional, tag = "6")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub irq_full: Option<Pressure>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PingMessage {
    #[prost(string, tag = "1")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub machine_id: String,
    #[prost(float, tag = "2")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub load1: f32,
    #[prost(float, tag = "3")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub load5: f32,
    #[prost(float, tag = "4")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub load15: f32,
    #[prost(uint64, tag = "5")]
    #[serde(
        skip_serializing_if = "json::is_default",
        serialize_with = "json::int_str"
    )]
    pub mem_usage: u64,
    #[prost(message, optional, tag = "6")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pressure: Option<PressureState>,
    #[prost(double, tag = "7")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub build_dir_free_percent: f64,
    #[prost(double, tag = "8")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub store_free_percent: f64,
    #[prost(uint64, tag = "9")]
    #[serde(
        skip_serializing_if = "json::is_default",
        serialize_with = "json::int_str"
    )]
    pub current_substituting_path_count: u64,
    #[prost(uint64, tag = "10")]
    #[serde(
        skip_serializing_if = "json::is_default",
        serialize_with = "json::int_str"
    )]
    pub current_uploading_path_count: u64,
    #[prost(uint64, tag = "11")]
    #[serde(
        skip_serializing_if = "json::is_default",
        serialize_with = "json::int_str"
    )]
    pub current_downloading_path_count: u64,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunnerRequest {
    #[prost(oneof = "runner_request::Message", tags = "1, 2, 3, 4, 5")]
    #[serde(flatten)]
    pub message: Option<runner_request::Message>,
}

pub mod runner_request {
    use serde::Serialize;

    /// A build message is large beside the others; they come one at a
    /// time, so it is not boxed.
    #[allow(clippy::large_enum_variant)]
    #[derive(Clone, PartialEq, prost::Oneof, Serialize)]
    #[serde(rename_all = "camelCase")]
    pub enum Message {
        #[prost(message, tag = "1")]
        Join(super::JoinResponse),
        #[prost(message, tag = "2")]
        ConfigUpdate(super::ConfigUpdate),
        #[prost(message, tag = "3")]
        Ping(super::SimplePingMessage),
        #[prost(message, tag = "4")]
        Build(super::BuildMessage),
        #[prost(message, tag = "5")]
        Abort(super::AbortMessage),
    }
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinResponse {
    #[prost(string, tag = "1")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub machine_id: String,
    #[prost(uint32, tag = "2")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub max_concurrent_downloads: u32,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigUpdate {
    #[prost(uint32, tag = "1")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub max_concurrent_downloads: u32,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SimplePingMessage {
    #[prost(string, tag = "1")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub message: String,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PresignedUploadOpts {
    #[prost(bool, tag = "1")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub upload_debug_info: bool,
}

/// One build step. Field 3 is reserved in the protocol.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildMessage {
    #[prost(string, tag = "1")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub build_id: String,
    #[prost(message, optional, tag = "2")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drv: Option<StorePath>,
    #[prost(uint64, tag = "4")]
    #[serde(
        skip_serializing_if = "json::is_default",
        serialize_with = "json::int_str"
    )]
    pub max_log_size: u64,
    #[prost(int32, tag = "5")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub max_silent_time: i32,
    #[prost(int32, tag = "6")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub build_timeout: i32,
    #[prost(message, optional, tag = "7")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presigned_url_opts: Option<PresignedUploadOpts>,
    #[prost(message, optional, tag = "8")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_drv: Option<Basic>,
    #[prost(uint64, tag = "9")]
    #[serde(
        skip_serializing_if = "json::is_default",
        serialize_with = "json::int_str"
    )]
    pub max_output_size: u64,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AbortMessage {
    #[prost(string, tag = "1")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub build_id: String,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepUpdate {
    #[prost(string, tag = "1")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub build_id: String,
    #[prost(string, tag = "2")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub machine_id: String,
    #[prost(enumeration = "StepStatus", tag = "3")]
    #[serde(
        skip_serializing_if = "json::is_default",
        serialize_with = "StepStatus::ser"
    )]
    pub step_status: i32,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequisitesResponse {
    #[prost(message, repeated, tag = "1")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub requisites: Vec<StorePath>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HasPathResponse {
    #[prost(bool, tag = "1")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub has_path: bool,
}

/// A piece of the build log: the chunks' `data` together are one zstd
/// frame; `drv` only in the first.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogChunk {
    #[prost(message, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drv: Option<StorePath>,
    #[prost(bytes = "vec", tag = "2")]
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "json::b64")]
    pub data: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AddToStoreHeader {
    #[prost(message, repeated, tag = "1")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub path_infos: Vec<ValidPathInfo>,
}

/// A NAR stream: one header, then chunks of one zstd frame holding the
/// header's NARs back to back.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AddToStoreRequest {
    #[prost(oneof = "add_to_store_request::Content", tags = "1, 2")]
    #[serde(flatten)]
    pub content: Option<add_to_store_request::Content>,
}

pub mod add_to_store_request {
    use serde::Serialize;

    #[derive(Clone, PartialEq, prost::Oneof, Serialize)]
    #[serde(rename_all = "camelCase")]
    pub enum Content {
        #[prost(message, tag = "1")]
        Header(super::AddToStoreHeader),
        #[prost(bytes, tag = "2")]
        #[serde(serialize_with = "super::json::b64")]
        NarChunk(Vec<u8>),
    }
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildMetric {
    #[prost(string, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[prost(double, tag = "2")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub value: f64,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildProduct {
    #[prost(message, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<RelativeStorePath>,
    #[prost(string, tag = "2")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub default_path: String,
    #[prost(string, tag = "3")]
    #[serde(rename = "type", skip_serializing_if = "json::is_default")]
    pub r#type: String,
    #[prost(string, tag = "4")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub subtype: String,
    #[prost(string, tag = "5")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub name: String,
    #[prost(bool, tag = "6")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub is_regular: bool,
    #[prost(string, optional, tag = "7")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256hash: Option<String>,
    #[prost(uint64, optional, tag = "8")]
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "json::opt_int_str"
    )]
    pub file_size: Option<u64>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NixSupport {
    #[prost(bool, tag = "1")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub failed: bool,
    #[prost(string, optional, tag = "2")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hydra_release_name: Option<String>,
    #[prost(message, repeated, tag = "3")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub products: Vec<BuildProduct>,
    #[prost(map = "string, message", tag = "4")]
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub metrics: HashMap<String, BuildMetric>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputInfo {
    #[prost(message, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<StorePath>,
    #[prost(uint64, tag = "2")]
    #[serde(
        skip_serializing_if = "json::is_default",
        serialize_with = "json::int_str"
    )]
    pub closure_size: u64,
    #[prost(uint64, tag = "3")]
    #[serde(
        skip_serializing_if = "json::is_default",
        serialize_with = "json::int_str"
    )]
    pub nar_size: u64,
    #[prost(message, optional, tag = "4")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nar_hash: Option<Hash>,
    #[prost(message, optional, tag = "5")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nix_support: Option<NixSupport>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildResultInfo {
    #[prost(string, tag = "1")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub build_id: String,
    #[prost(string, tag = "2")]
    #[serde(skip_serializing_if = "json::is_default")]
    pub machine_id: String,
    #[prost(uint64, tag = "3")]
    #[serde(
        skip_serializing_if = "json::is_default",
        serialize_with = "json::int_str"
    )]
    pub import_time_ms: u64,
    #[prost(uint64, tag = "4")]
    #[serde(
        skip_serializing_if = "json::is_default",
        serialize_with = "json::int_str"
    )]
    pub build_time_ms: u64,
    #[prost(uint64, tag = "5")]
    #[serde(
        skip_serializing_if = "json::is_default",
        serialize_with = "json::int_str"
    )]
    pub upload_time_ms: u64,
    #[prost(enumeration = "BuildResultState", tag = "6")]
    #[serde(
        skip_serializing_if = "json::is_default",
        serialize_with = "BuildResultState::ser"
    )]
    pub result_state: i32,
    #[prost(map = "string, message", tag = "7")]
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub output_infos: HashMap<String, OutputInfo>,
    #[prost(string, optional, tag = "8")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_msg: Option<String>,
}

/// Decode one message of the type the recordings name (`runner.v1.…`,
/// `nix.store.v1.…`) to its canonical JSON: what the fixtures hold.
pub fn decode_to_json(type_name: &str, bytes: &[u8]) -> Result<serde_json::Value, String> {
    fn go<M: prost::Message + Default + Serialize>(b: &[u8]) -> Result<serde_json::Value, String> {
        let m = M::decode(b).map_err(|e| e.to_string())?;
        serde_json::to_value(&m).map_err(|e| e.to_string())
    }
    match type_name {
        "runner.v1.Empty" => go::<Empty>(bytes),
        "runner.v1.VersionCheckRequest" => go::<VersionCheckRequest>(bytes),
        "runner.v1.VersionCheckResponse" => go::<VersionCheckResponse>(bytes),
        "runner.v1.BuilderRequest" => go::<BuilderRequest>(bytes),
        "runner.v1.RunnerRequest" => go::<RunnerRequest>(bytes),
        "runner.v1.StepUpdate" => go::<StepUpdate>(bytes),
        "runner.v1.RequisitesResponse" => go::<RequisitesResponse>(bytes),
        "runner.v1.HasPathResponse" => go::<HasPathResponse>(bytes),
        "runner.v1.LogChunk" => go::<LogChunk>(bytes),
        "runner.v1.AddToStoreRequest" => go::<AddToStoreRequest>(bytes),
        "runner.v1.BuildResultInfo" => go::<BuildResultInfo>(bytes),
        "nix.store.v1.StorePath" => go::<StorePath>(bytes),
        "nix.store.v1.StorePaths" => go::<StorePaths>(bytes),
        other => Err(format!("no type {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    const FIX: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/fixtures/hydra-queue-runner"
    );

    /// The recorded lines of one run; missing, the test says so loudly
    /// (and fails under `AIRLOCK_REQUIRE_E2E=1`).
    fn recording(name: &str) -> Option<Vec<serde_json::Value>> {
        match std::fs::read_to_string(format!("{FIX}/{name}")) {
            Ok(t) => Some(
                t.lines()
                    .map(|l| serde_json::from_str(l).expect("a JSON line"))
                    .collect(),
            ),
            Err(e) => {
                crate::testing::skipped(&format!("hydra golden test: fixture {FIX}/{name}: {e}"));
                None
            }
        }
    }

    /// Re-encode a decoded message: byte for byte what was recorded,
    /// where the message has no map (a map's order is not defined).
    fn reencode<M: prost::Message + Default>(bytes: &[u8]) -> Vec<u8> {
        M::decode(bytes).unwrap().encode_to_vec()
    }

    #[test]
    fn every_recorded_message_decodes_to_its_recorded_json() {
        let mut n = 0;
        for f in ["success.jsonl", "failure.jsonl"] {
            let Some(lines) = recording(f) else {
                return;
            };
            for l in lines {
                let ty = l["type"].as_str().unwrap();
                let bytes = hex::decode(l["hex"].as_str().unwrap()).unwrap();
                let got = decode_to_json(ty, &bytes)
                    .unwrap_or_else(|e| panic!("{f} seq {}: {ty}: {e}", l["seq"]));
                assert_eq!(got, l["json"], "{f} seq {} ({ty})", l["seq"]);
                let again = match ty {
                    "runner.v1.VersionCheckRequest" => reencode::<VersionCheckRequest>(&bytes),
                    "runner.v1.VersionCheckResponse" => reencode::<VersionCheckResponse>(&bytes),
                    "runner.v1.BuilderRequest" => reencode::<BuilderRequest>(&bytes),
                    "runner.v1.StepUpdate" => reencode::<StepUpdate>(&bytes),
                    "runner.v1.LogChunk" => reencode::<LogChunk>(&bytes),
                    "runner.v1.AddToStoreRequest" => reencode::<AddToStoreRequest>(&bytes),
                    "nix.store.v1.StorePath" => reencode::<StorePath>(&bytes),
                    "nix.store.v1.StorePaths" => reencode::<StorePaths>(&bytes),
                    "runner.v1.Empty" => reencode::<Empty>(&bytes),
                    // Maps inside: values compared above.
                    _ => bytes.clone(),
                };
                assert_eq!(again, bytes, "{f} seq {} ({ty}) re-encodes", l["seq"]);
                n += 1;
            }
        }
        assert_eq!(n, 42, "every recorded message");
    }

    #[test]
    fn the_recorded_payloads_are_single_zstd_frames() {
        let Some(lines) = recording("success.jsonl") else {
            return;
        };
        let msg = |seq: u64| -> Vec<u8> {
            let l = lines.iter().find(|l| l["seq"] == seq).unwrap();
            hex::decode(l["hex"].as_str().unwrap()).unwrap()
        };
        let log = LogChunk::decode(&msg(13)[..]).unwrap();
        let text = crate::hydra::frame::decompress(&[log.data], 1 << 20).unwrap();
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "airlock probe: pretending to build qbq4rcbdm97v3l5r0a6r7zb73jlwydaj-airlock-hello2.drv\n"
        );
        let Some(add_to_store_request::Content::Header(h)) =
            AddToStoreRequest::decode(&msg(19)[..]).unwrap().content
        else {
            panic!("seq 19 is a header")
        };
        let Some(add_to_store_request::Content::NarChunk(chunk)) =
            AddToStoreRequest::decode(&msg(20)[..]).unwrap().content
        else {
            panic!("seq 20 is a chunk")
        };
        let nars = crate::hydra::frame::decompress(&[chunk], 1 << 20).unwrap();
        let split = crate::hydra::frame::split_nars(&h.path_infos, &nars).unwrap();
        assert_eq!(split.len(), 1);
        assert_eq!(split[0].1.len(), 136);
        // Our own framing reads back the same way, and a flipped byte is
        // named as a hash mismatch.
        let chunks = crate::hydra::frame::compress_chunks(&nars).unwrap();
        assert_eq!(
            crate::hydra::frame::decompress(&chunks, 1 << 20).unwrap(),
            nars
        );
        let mut bad = nars.clone();
        bad[100] ^= 1;
        let e = crate::hydra::frame::split_nars(&h.path_infos, &bad).unwrap_err();
        assert!(e.to_string().contains("SHA-256"), "{e}");
    }

    #[test]
    fn unknown_enum_numbers_show_as_numbers() {
        assert_eq!(StepStatus::name_of(2), "SeningInputs");
        assert_eq!(BuildResultState::name_of(99), "99");
        assert_eq!(HashAlgorithm::name_of(0), "SHA256");
    }
}
