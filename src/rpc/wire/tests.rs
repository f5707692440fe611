use super::*;
use serde_json::json;

#[test]
fn values_are_found_back_to_back_and_across_reads() {
    let two = b"{\n  \"a\": 1\n}{\"b\": [2]}  ";
    let Next::Value(v, n) = next_value(two) else {
        panic!("first value")
    };
    assert_eq!(v, json!({"a": 1}));
    let Next::Value(v2, _) = next_value(&two[n..]) else {
        panic!("second value")
    };
    assert_eq!(v2, json!({"b": [2]}));
    assert!(matches!(next_value(b"  {\"a\": [1, "), Next::Incomplete));
    assert!(matches!(next_value(b"   "), Next::Incomplete));
    assert!(matches!(next_value(b"{\"a\" 1}"), Next::Garbage));
    assert!(matches!(next_value(b"}"), Next::Garbage));
}

#[test]
fn requests_are_checked_like_spdk() {
    let ok = validate(json!({"jsonrpc": "2.0", "method": "m", "id": 7, "params": {"x": 1}}));
    assert_eq!(
        ok,
        Ok(Request {
            id: Some(json!(7)),
            method: "m".into(),
            params: Some(json!({"x": 1}))
        })
    );
    // params: null is no params; no id is a notification.
    let note = validate(json!({"method": "m", "params": null}));
    assert_eq!(
        note,
        Ok(Request {
            id: None,
            method: "m".into(),
            params: None
        })
    );
    for bad in [
        json!([1]),
        json!({"id": 1}),
        json!({"method": 3, "id": 1}),
        json!({"method": "m", "id": {"x": 1}}),
        json!({"method": "m", "jsonrpc": "1.0"}),
        json!({"method": "m", "params": 5}),
        json!({"method": "m", "extra": true}),
    ] {
        let (_, e) = validate(bad.clone()).expect_err(&bad.to_string());
        assert_eq!(e.code, INVALID_REQUEST, "{bad}");
    }
    let (id, _) = validate(json!({"method": "m", "id": "s", "extra": 1})).unwrap_err();
    assert_eq!(id, json!("s"));
}

#[test]
fn responses_are_compact_and_ordered() {
    assert_eq!(
        response(&json!(1), &Ok(json!(true))),
        r#"{"jsonrpc":"2.0","id":1,"result":true}"#
    );
    assert_eq!(
        response(&json!("a"), &Err(RpcError::new(-19, "No such \"device\""))),
        r#"{"jsonrpc":"2.0","id":"a","error":{"code":-19,"message":"No such \"device\""}}"#
    );
}
