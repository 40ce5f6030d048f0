//! Registering and looking up endpoints: names taken once, typed lookups here and in other envs
//! (through the `endpoint-verifier`), and how refs compare and print.
//!
//! Every env binds 127.0.0.1 with port 0. Waits are on channels, conditions or futures with
//! deadlines.

use std::collections::HashSet;

use rpcenv::RpcError;

mod common;
use common::{client, new_env, server, Echo};

#[test]
fn duplicate_names_and_registration_after_shutdown_are_refused() {
    let env = new_env();
    env.setup_endpoint("dup", Echo).unwrap();
    let e = env.setup_endpoint("dup", Echo).unwrap_err();
    assert_eq!(e.to_string(), "There is already an RpcEndpoint called dup");
    env.shutdown();
    assert!(matches!(
        env.setup_endpoint("late", Echo),
        Err(RpcError::EnvStopped)
    ));
}

#[test]
fn lookups_name_the_missing_endpoint_or_both_message_types() {
    let env = new_env();
    env.setup_endpoint("echo", Echo).unwrap();
    assert!(env.endpoint_ref::<String>("echo").is_ok());
    let e = env.endpoint_ref::<String>("nonexist-endpoint").unwrap_err();
    assert!(
        e.to_string().contains("rpc://nonexist-endpoint@127.0.0.1:"),
        "{e}"
    );
    let e = env.endpoint_ref::<u64>("echo").unwrap_err();
    match e {
        RpcError::MessageTypeMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, "u64");
            assert_eq!(actual, "alloc::string::String");
        }
        other => panic!("expected a type mismatch, got {other:?}"),
    }
    env.shutdown();
}

#[test]
fn refs_are_equal_and_hashed_by_address_and_display_like_sparks() {
    let env = new_env();
    let r = env.setup_endpoint("echo", Echo).unwrap();
    let again = env.endpoint_ref::<String>("echo").unwrap();
    assert_eq!(r, again);
    let set: HashSet<_> = [r.clone(), again].into_iter().collect();
    assert_eq!(set.len(), 1);
    let port = env.address().unwrap().port();
    assert_eq!(
        r.to_string(),
        format!("RpcEndpointRef(rpc://echo@127.0.0.1:{port})")
    );
    assert_eq!(r.name(), "echo");
    env.shutdown();
}

/// Spark: RpcEnvSuite "non-existent endpoint".
#[test]
fn non_existent_endpoint() {
    let env = server("server");
    let port = env.address().unwrap().port();
    let uri = format!("rpc://nonexist-endpoint@127.0.0.1:{port}");
    // From the env itself and from another env (through the verifier).
    let e = env
        .setup_endpoint_ref::<String>(env.address().unwrap(), "nonexist-endpoint")
        .unwrap_err();
    assert!(
        matches!(&e, RpcError::EndpointNotFound { uri: u } if *u == uri),
        "{e:?}"
    );
    let another = client("client");
    let e = another
        .setup_endpoint_ref::<String>(env.address().unwrap(), "nonexist-endpoint")
        .unwrap_err();
    assert!(e.to_string().contains(&uri), "{e}");
    another.shutdown();
    env.shutdown();
}

#[test]
fn a_lookup_with_the_wrong_message_type_fails_naming_both() {
    let env = server("server");
    env.setup_endpoint("echo", Echo).unwrap();
    let another = client("client");
    match another
        .setup_endpoint_ref::<u64>(env.address().unwrap(), "echo")
        .unwrap_err()
    {
        RpcError::MessageTypeMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, "u64");
            assert_eq!(actual, "alloc::string::String");
        }
        other => panic!("expected MessageTypeMismatch, got {other:?}"),
    }
    another.shutdown();
    env.shutdown();
}
