//! Spark's StreamSuite (110) and ChunkFetchIntegrationSuite (108) over TCP.

mod common;

use common::*;
use rpcenv_transport::TransportError;

#[tokio::test]
async fn stream_suite_test_zero_length_stream() {
    let (server, _) = test_server().await;
    let (_f, client) = client_of(&server).await;
    let s = within(client.stream("emptyBuffer")).await.unwrap();
    assert_eq!(s.len(), 0);
    assert!(within(s.collect(64 << 20)).await.unwrap().is_empty());
}

#[tokio::test]
async fn stream_suite_test_single_stream() {
    let (server, _) = test_server().await;
    let (_f, client) = client_of(&server).await;
    let s = within(client.stream("largeBuffer")).await.unwrap();
    assert_eq!(s.len(), 100_000);
    assert_eq!(within(s.collect(64 << 20)).await.unwrap(), pattern(100_000));
}

#[tokio::test]
async fn stream_suite_test_multiple_streams() {
    let (server, _) = test_server().await;
    let (_f, client) = client_of(&server).await;
    for i in 0..20 {
        let (id, n) = [
            ("largeBuffer", 100_000),
            ("smallBuffer", 100),
            ("emptyBuffer", 0),
        ][i % 3];
        let s = within(client.stream(id)).await.unwrap();
        assert_eq!(within(s.collect(64 << 20)).await.unwrap(), pattern(n));
    }
}

#[tokio::test]
async fn stream_suite_test_concurrent_streams() {
    let (server, _) = test_server().await;
    let (_f, client) = client_of(&server).await;
    let futs: Vec<_> = (0..20)
        .map(|i| {
            let (id, n) = [
                ("largeBuffer", 100_000),
                ("smallBuffer", 100),
                ("emptyBuffer", 0),
            ][i % 3];
            (n, client.stream(id))
        })
        .collect();
    let mut handles = Vec::new();
    for (n, f) in futs {
        handles.push(tokio::spawn(async move {
            (n, f.await.unwrap().collect(64 << 20).await.unwrap())
        }));
    }
    for h in handles {
        let (n, body) = within(h).await.unwrap();
        assert_eq!(body, pattern(n));
    }
}

#[tokio::test]
async fn stream_failure_is_answered_in_order() {
    let (server, _) = test_server().await;
    let (_f, client) = client_of(&server).await;
    let a = client.stream("smallBuffer");
    let b = client.stream("nope");
    let c = client.stream("largeBuffer");
    assert_eq!(
        within(within(a).await.unwrap().collect(64 << 20))
            .await
            .unwrap(),
        pattern(100)
    );
    let e = within(b).await.unwrap_err();
    assert!(matches!(e, TransportError::StreamFailure { .. }));
    assert_eq!(e.to_string(), "Stream 'nope' was not found.");
    assert_eq!(
        within(within(c).await.unwrap().collect(64 << 20))
            .await
            .unwrap(),
        pattern(100_000)
    );
}

#[tokio::test]
async fn chunk_fetch_integration_suite_fetch_buffer_chunk() {
    let (server, _) = test_server().await;
    let (_f, client) = client_of(&server).await;
    assert_eq!(
        within(client.fetch_chunk(1, 0)).await.unwrap(),
        pattern(100_000)
    );
}

#[tokio::test]
async fn chunk_fetch_integration_suite_fetch_file_chunk() {
    let (server, _) = test_server().await;
    let (_f, client) = client_of(&server).await;
    assert_eq!(
        within(client.fetch_chunk(1, 1)).await.unwrap(),
        pattern(1024 - 25)
    );
}

#[tokio::test]
async fn chunk_fetch_integration_suite_fetch_non_existent_chunk() {
    let (server, _) = test_server().await;
    let (_f, client) = client_of(&server).await;
    let e = within(client.fetch_chunk(1, 12345)).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "Failure while fetching StreamChunkId[streamId=1,chunkIndex=12345]: Chunk was not found"
    );
}

#[tokio::test]
async fn chunk_fetch_integration_suite_fetch_both_chunks() {
    let (server, _) = test_server().await;
    let (_f, client) = client_of(&server).await;
    let (a, b) = (client.fetch_chunk(1, 0), client.fetch_chunk(1, 1));
    assert_eq!(within(a).await.unwrap(), pattern(100_000));
    assert_eq!(within(b).await.unwrap(), pattern(1024 - 25));
}

#[tokio::test]
async fn chunk_fetch_integration_suite_fetch_chunk_and_non_existent() {
    let (server, _) = test_server().await;
    let (_f, client) = client_of(&server).await;
    let (a, b) = (client.fetch_chunk(1, 0), client.fetch_chunk(1, 12345));
    assert_eq!(within(a).await.unwrap(), pattern(100_000));
    assert!(matches!(
        within(b).await.unwrap_err(),
        TransportError::ChunkFetchFailure {
            chunk_index: 12345,
            ..
        }
    ));
}

/// Stream and chunk bodies given as a source are written in pieces and arrive whole, in order
/// with the replies around them.
#[tokio::test]
async fn sourced_stream_and_chunk_bodies_arrive_whole() {
    let (server, _) = test_server().await;
    let (_f, client) = client_of(&server).await;
    let big = within(client.stream("sourced/3000000")).await.unwrap();
    let chunk = client.fetch_chunk(2, 3);
    let small = within(client.stream("smallBuffer")).await.unwrap();
    assert_eq!(big.len(), 3_000_000);
    assert_eq!(
        within(big.collect(64 << 20)).await.unwrap(),
        pattern(3_000_000)
    );
    assert_eq!(within(chunk).await.unwrap(), pattern(300_000));
    assert_eq!(within(small.collect(100)).await.unwrap(), pattern(100));
}

/// `collect` refuses a stream announced longer than the caller's limit, before reserving
/// anything, naming the stream and both sizes.
#[tokio::test]
async fn collect_refuses_a_stream_longer_than_the_callers_limit() {
    let (server, _) = test_server().await;
    let (_f, client) = client_of(&server).await;
    let s = within(client.stream("largeBuffer")).await.unwrap();
    let err = within(s.collect(99_999)).await.unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::StreamTooLarge {
                len: 100_000,
                limit: 99_999,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("largeBuffer"), "{err}");
    // The connection goes on: the refused body is discarded as it arrives.
    let again = within(client.stream("smallBuffer")).await.unwrap();
    assert_eq!(within(again.collect(100)).await.unwrap(), pattern(100));
}
