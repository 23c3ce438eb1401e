//! OTLP protobuf values → OpenTelemetry API values.
//!
//! Why a conversion at all: the collector's span and metric shapes (names,
//! attributes, units) are built once, as OTLP messages, by
//! `varta_telemetry`; the façade reads them from there instead of
//! keeping a second copy that could drift, and hands the host's SDK the
//! same content through the API. Pure functions; values of kinds the
//! collector never produces (arrays, maps, bytes) are left out.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::{KeyValue, Value};
use opentelemetry_proto::tonic::common::v1::{KeyValue as ProtoKeyValue, any_value};

/// One OTLP attribute as an API attribute (`None` for a kind the collector never emits).
pub fn key_value(kv: &ProtoKeyValue) -> Option<KeyValue> {
    let value = match kv.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Value::from(s.clone()),
        any_value::Value::IntValue(i) => Value::I64(*i),
        any_value::Value::BoolValue(b) => Value::Bool(*b),
        any_value::Value::DoubleValue(d) => Value::F64(*d),
        _ => return None,
    };
    Some(KeyValue::new(kv.key.clone(), value))
}

/// Every convertible attribute of `kvs`, in order.
pub fn attributes(kvs: &[ProtoKeyValue]) -> Vec<KeyValue> {
    kvs.iter().filter_map(key_value).collect()
}

/// Unix nanoseconds as a wall-clock time.
pub fn time(unix_ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(unix_ns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::AnyValue;

    fn proto(key: &str, value: Option<any_value::Value>) -> ProtoKeyValue {
        ProtoKeyValue { key: key.into(), value: Some(AnyValue { value }), ..Default::default() }
    }

    #[test]
    fn scalar_values_keep_their_kind_and_others_are_left_out() {
        let kvs = [
            proto("s", Some(any_value::Value::StringValue("x".into()))),
            proto("i", Some(any_value::Value::IntValue(-3))),
            proto("b", Some(any_value::Value::BoolValue(true))),
            proto("d", Some(any_value::Value::DoubleValue(0.5))),
            proto("bytes", Some(any_value::Value::BytesValue(vec![1]))),
            proto("empty", None),
        ];
        let got = attributes(&kvs);
        assert_eq!(
            got,
            vec![
                KeyValue::new("s", "x"),
                KeyValue::new("i", -3_i64),
                KeyValue::new("b", true),
                KeyValue::new("d", 0.5),
            ]
        );
        assert_eq!(time(1_500_000_000).duration_since(UNIX_EPOCH).ok(), Some(Duration::from_millis(1500)));
    }
}
