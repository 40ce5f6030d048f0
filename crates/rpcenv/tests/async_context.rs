//! Envs used from async code: blocking calls on a runtime thread return an error instead of
//! deadlocking, and creating, using and dropping an env there never panics.
//!
//! Every env binds 127.0.0.1 with port 0. Waits are on channels, conditions or futures with
//! deadlines.

use std::time::Duration;

use rpcenv::{RpcEnv, RpcError, RpcTimeout};

mod common;
use common::{new_env, suite_conf, Echo, WAIT};

#[test]
fn blocking_calls_on_runtime_threads_return_an_error() {
    let env = new_env();
    let r = env.setup_endpoint("echo", Echo).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        assert!(matches!(
            r.ask_sync::<String>("x".into()),
            Err(RpcError::BlockingInAsyncContext { .. })
        ));
        assert!(matches!(
            env.await_termination(),
            Err(RpcError::BlockingInAsyncContext { .. })
        ));
        // The async form works on the same thread.
        assert_eq!(r.ask::<String>("x".into()).await.unwrap(), "x");
    });
    env.shutdown();
}

#[test]
fn an_env_created_used_and_dropped_inside_async_code_never_panics() {
    for flavor in ["current", "multi"] {
        let rt = match flavor {
            "current" => tokio::runtime::Builder::new_current_thread(),
            _ => tokio::runtime::Builder::new_multi_thread(),
        }
        .enable_all()
        .build()
        .unwrap();
        rt.block_on(async {
            let env = RpcEnv::builder("async").conf(suite_conf()).build().unwrap();
            let r = env.setup_endpoint("echo", Echo).unwrap();
            assert_eq!(r.ask::<String>("x".into()).await.unwrap(), "x");
            let timed_out = r
                .ask_with_timeout::<String>("y".into(), RpcTimeout::new(Duration::ZERO, "t"))
                .await;
            // Either the reply or the timeout wins the race; neither panics.
            let _ = timed_out;
            let env2 = env.clone();
            drop(env);
            env2.shutdown();
            tokio::time::timeout(WAIT, env2.terminated())
                .await
                .expect("env terminates");
            drop(env2);
            // Dropping an env without shutting it down is fine too.
            let env3 = RpcEnv::builder("dropped")
                .conf(suite_conf())
                .build()
                .unwrap();
            env3.setup_endpoint("echo", Echo).unwrap();
            drop(env3);
        });
    }
}
