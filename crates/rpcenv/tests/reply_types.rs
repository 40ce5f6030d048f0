//! Replies carry their type: an ask for one type answered with another fails with
//! `UnexpectedReplyType` naming both, locally and over the network, and never decodes the bytes
//! as whatever they happen to fit (an empty `String` and `0u64` have the same postcard bytes).
//!
//! Every env binds 127.0.0.1 with port 0.

use rpcenv::{RpcEndpointRef, RpcError};

mod common;
// `Echo` replies the string it is sent, whatever type the asker expects.
use common::{server, Echo};

fn assert_names_both(e: RpcError) {
    match &e {
        RpcError::UnexpectedReplyType {
            expected, actual, ..
        } => {
            assert_eq!(*expected, "u64");
            assert!(actual.ends_with("String"), "{e}");
        }
        other => panic!("expected UnexpectedReplyType, got {other:?}"),
    }
    let text = e.to_string();
    assert!(text.contains("u64") && text.contains("String"), "{text}");
}

fn check(r: &RpcEndpointRef<String>) {
    for reply in ["", "hello"] {
        let e = r.ask_sync::<u64>(reply.to_string()).unwrap_err();
        assert_names_both(e);
    }
    // The right type still works.
    assert_eq!(r.ask_sync::<String>("hi".into()).unwrap(), "hi");
}

#[test]
fn local_ask_for_u64_answered_with_a_string_names_both_types() {
    let env = server("local");
    let r = env.setup_endpoint("stringer", Echo).unwrap();
    check(&r);
    env.shutdown();
}

#[test]
fn remote_ask_for_u64_answered_with_a_string_names_both_types() {
    let env = server("local");
    env.setup_endpoint("stringer", Echo).unwrap();
    let other = server("remote");
    let r: RpcEndpointRef<String> = other
        .setup_endpoint_ref(env.address().unwrap(), "stringer")
        .unwrap();
    check(&r);
    other.shutdown();
    env.shutdown();
}
