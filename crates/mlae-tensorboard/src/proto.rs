//! The few fields of TensorBoard's `Event` and `Summary` messages (tensorboard/compat/proto
//! `event.proto`, `summary.proto`) that scalars need, hand-written for `prost` so that no
//! protoc or build script is needed. Field numbers are the protocol: do not change them.

/// `Event`: one record of an event file.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Event {
    /// Seconds since the Unix epoch.
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(oneof = "What", tags = "3, 5, 7")]
    pub what: Option<What>,
}

/// `Event.what`: the first event of a file carries the file version, the others a summary.
#[derive(Clone, PartialEq, prost::Oneof)]
pub(crate) enum What {
    /// `"brain.Event:2"`: tells readers how to handle restarts (version 2: only by explicit
    /// `SessionLog` events, never by steps going backwards).
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
    /// A session's start or stop; a START tells readers that the points at its step and later
    /// which they have already read are orphans of an earlier session, to be dropped.
    #[prost(message, tag = "7")]
    SessionLog(SessionLog),
}

/// `SessionLog`, status only.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SessionLog {
    /// `SessionLog.SessionStatus`: 0 unspecified, 1 START, 2 STOP, 3 CHECKPOINT.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

/// `SessionLog.SessionStatus.START`.
pub(crate) const SESSION_START: i32 = 1;

/// `Summary`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `Summary.Value`, scalars only.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    /// A member of the `value` oneof in the real message, hence `optional` here: a plain proto3
    /// float would not be written when it is 0.0, and readers would then see no value at all.
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
}
