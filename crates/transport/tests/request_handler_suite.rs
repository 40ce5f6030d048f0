//! Spark's TransportRequestHandlerSuite, the parts that apply: merged-block-meta requests are
//! answered with MergedBlockMetaSuccess (chunk count and bitmap bytes) or an RpcFailure, and the
//! connection keeps serving after a failure.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use rpcenv_transport::{
    RpcHandler, RpcResponder, TransportClient, TransportClientFactory, TransportConf,
    TransportServer,
};

/// Serves merged block meta: two chunks for non-negative reduce ids, a failure otherwise.
struct MetaHandler;

impl RpcHandler for MetaHandler {
    fn receive(&self, _: &TransportClient, message: Bytes, responder: RpcResponder) {
        responder.respond(message);
    }

    fn merged_block_meta(
        &self,
        _: &TransportClient,
        app_id: &str,
        shuffle_id: i32,
        shuffle_merge_id: i32,
        reduce_id: i32,
    ) -> Result<(i32, Bytes), String> {
        if reduce_id < 0 {
            return Err(format!(
                "no merged meta for {app_id} shuffle {shuffle_id} reduce {reduce_id}"
            ));
        }
        let bitmaps = format!("{app_id}/{shuffle_id}/{shuffle_merge_id}/{reduce_id}");
        Ok((2, Bytes::from(bitmaps)))
    }
}

#[tokio::test]
async fn transport_request_handler_suite_handle_merged_block_meta_request() {
    let server = TransportServer::bind(
        TransportConf::default(),
        "127.0.0.1",
        0,
        Arc::new(MetaHandler),
    )
    .await
    .unwrap();
    let factory = TransportClientFactory::new(
        TransportConf::default(),
        Arc::new(rpcenv_transport::NoOpRpcHandler),
    );
    let client = factory
        .create_client("127.0.0.1", server.port())
        .await
        .unwrap();

    let (chunks, body) = within(client.send_merged_block_meta_req("app1", 19, 0, 0))
        .await
        .unwrap();
    assert_eq!(chunks, 2);
    assert_eq!(&body[..], b"app1/19/0/0");

    let e = within(client.send_merged_block_meta_req("app1", 21, -1, -1))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("no merged meta for app1 shuffle 21 reduce -1"),
        "{e}"
    );

    // The connection keeps serving after the failure.
    assert!(client.is_active());
    let echoed = within(client.send_rpc(Bytes::from_static(b"still here")))
        .await
        .unwrap();
    assert_eq!(&echoed[..], b"still here");
}
