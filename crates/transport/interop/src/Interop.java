// Interop harness: Spark's own network-common (from pyspark's jars) against rpcenv-transport.
//
//   java Interop client PORT   drive our echo_server with Spark's TransportClient
//   java Interop server        run Spark's TransportServer with an echo RpcHandler; prints
//                              "listening on 127.0.0.1:PORT" and serves until killed
//   java Interop client-auth-fail PORT
//                              expect Spark's client to be refused by our server (exit 0 if so)
//
// Every system property starting with "spark." goes into the TransportConf (e.g.
// -Dspark.network.crypto.enabled=true, -Dspark.ssl.rpc.enabled=true). With -Dinterop.secret=S
// (and -Dinterop.appId=ID, default sparkSaslUser) the client adds Spark's AuthClientBootstrap and
// the server Spark's AuthServerBootstrap.
//
// Client mode prints "ok <check>" per passed check and exits 1 on the first mismatch.

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.*;
import java.util.concurrent.*;
import java.util.concurrent.atomic.AtomicLong;

import org.apache.spark.network.TransportContext;
import org.apache.spark.network.buffer.ManagedBuffer;
import org.apache.spark.network.buffer.NioManagedBuffer;
import org.apache.spark.network.client.*;
import org.apache.spark.network.crypto.AuthClientBootstrap;
import org.apache.spark.network.crypto.AuthServerBootstrap;
import org.apache.spark.network.sasl.SecretKeyHolder;
import org.apache.spark.network.server.*;
import org.apache.spark.network.util.MapConfigProvider;
import org.apache.spark.network.util.TransportConf;

public class Interop {
    static final long TIMEOUT_MS = 30_000;

    static byte[] pattern(int n) {
        byte[] b = new byte[n];
        for (int i = 0; i < n; i++) b[i] = (byte) (i % 251);
        return b;
    }

    static byte[] bytes(ByteBuffer buf) {
        ByteBuffer d = buf.duplicate();
        byte[] b = new byte[d.remaining()];
        d.get(b);
        return b;
    }

    static void check(boolean cond, String what) {
        if (!cond) {
            System.out.println("MISMATCH " + what);
            System.out.flush();
            System.exit(1);
        }
        System.out.println("ok " + what);
    }

    static TransportConf conf() {
        Map<String, String> m = new HashMap<>();
        for (String k : System.getProperties().stringPropertyNames()) {
            if (k.startsWith("spark.")) m.put(k, System.getProperty(k));
        }
        return new TransportConf("rpc", new MapConfigProvider(m));
    }

    static final String SECRET = System.getProperty("interop.secret");
    static final String APP_ID = System.getProperty("interop.appId", "sparkSaslUser");

    /** Knows one app id and its secret (a server refuses any other app id). */
    static SecretKeyHolder holder() {
        return new SecretKeyHolder() {
            public String getSaslUser(String appId) { return appId; }
            public String getSecretKey(String appId) { return APP_ID.equals(appId) ? SECRET : null; }
        };
    }

    static List<TransportClientBootstrap> clientBootstraps(TransportConf conf) {
        List<TransportClientBootstrap> l = new ArrayList<>();
        if (SECRET != null) l.add(new AuthClientBootstrap(conf, APP_ID, holder()));
        return l;
    }

    static List<TransportServerBootstrap> serverBootstraps(TransportConf conf) {
        List<TransportServerBootstrap> l = new ArrayList<>();
        if (SECRET != null) l.add(new AuthServerBootstrap(conf, holder()));
        return l;
    }

    static void clientAuthFail(int port) throws Exception {
        TransportConf conf = conf();
        TransportContext ctx = new TransportContext(conf, new NoOpRpcHandler());
        TransportClientFactory factory = ctx.createClientFactory(clientBootstraps(conf));
        try {
            TransportClient c = factory.createClient("127.0.0.1", port);
            byte[] small = "0123456789abcdef".getBytes(StandardCharsets.UTF_8);
            c.sendRpcSync(ByteBuffer.wrap(small), TIMEOUT_MS);
            System.out.println("MISMATCH the client was not refused");
            System.exit(1);
        } catch (Exception e) {
            Throwable t = e;
            StringBuilder all = new StringBuilder();
            while (t != null) { all.append(t).append(" | "); t = t.getCause(); }
            check(all.toString().contains("Authentication failed"), "Spark client refused: " + all);
        }
        factory.close();
        ctx.close();
        System.out.println("ALL OK (Spark TransportClient refused by rpcenv echo_server)");
    }

    // ---- client mode -------------------------------------------------------------------

    static class StreamResult {
        final CompletableFuture<byte[]> done = new CompletableFuture<>();
        final java.io.ByteArrayOutputStream data = new java.io.ByteArrayOutputStream();
        StreamCallback callback() {
            return new StreamCallback() {
                public void onData(String id, ByteBuffer buf) { byte[] b = bytes(buf); data.write(b, 0, b.length); }
                public void onComplete(String id) { done.complete(data.toByteArray()); }
                public void onFailure(String id, Throwable cause) { done.completeExceptionally(cause); }
            };
        }
    }

    static CompletableFuture<byte[]> chunk(TransportClient c, long stream, int idx) {
        CompletableFuture<byte[]> f = new CompletableFuture<>();
        c.fetchChunk(stream, idx, new ChunkReceivedCallback() {
            public void onSuccess(int i, ManagedBuffer buf) {
                try { f.complete(bytes(buf.nioByteBuffer())); } catch (Exception e) { f.completeExceptionally(e); }
            }
            public void onFailure(int i, Throwable e) { f.completeExceptionally(e); }
        });
        return f;
    }

    static String failureOf(CompletableFuture<byte[]> f) throws Exception {
        try {
            f.get(TIMEOUT_MS, TimeUnit.MILLISECONDS);
            return null;
        } catch (ExecutionException e) {
            return e.getCause().getMessage();
        }
    }

    static void client(int port) throws Exception {
        TransportConf conf = conf();
        TransportContext ctx = new TransportContext(conf, new NoOpRpcHandler());
        TransportClientFactory factory = ctx.createClientFactory(clientBootstraps(conf));
        TransportClient c = factory.createClient("127.0.0.1", port);

        byte[] small = "0123456789abcdef".getBytes(StandardCharsets.UTF_8);
        check(Arrays.equals(bytes(c.sendRpcSync(ByteBuffer.wrap(small), TIMEOUT_MS)), small), "rpc 16-byte echo");
        check(bytes(c.sendRpcSync(ByteBuffer.allocate(0), TIMEOUT_MS)).length == 0, "rpc empty echo");
        byte[] big = pattern(1 << 20);
        check(Arrays.equals(bytes(c.sendRpcSync(ByteBuffer.wrap(big), TIMEOUT_MS)), big), "rpc 1 MiB echo");

        List<CompletableFuture<byte[]>> futs = new ArrayList<>();
        for (int i = 0; i < 1000; i++) {
            CompletableFuture<byte[]> f = new CompletableFuture<>();
            c.sendRpc(ByteBuffer.wrap(("req-" + i).getBytes(StandardCharsets.UTF_8)), new RpcResponseCallback() {
                public void onSuccess(ByteBuffer r) { f.complete(bytes(r)); }
                public void onFailure(Throwable e) { f.completeExceptionally(e); }
            });
            futs.add(f);
        }
        boolean allOk = true;
        for (int i = 0; i < futs.size(); i++) {
            allOk &= new String(futs.get(i).get(TIMEOUT_MS, TimeUnit.MILLISECONDS), StandardCharsets.UTF_8).equals("req-" + i);
        }
        check(allOk, "1000 pipelined rpcs");

        for (int i = 0; i < 10; i++) c.send(ByteBuffer.wrap(("one-way-" + i).getBytes(StandardCharsets.UTF_8)));
        check(Arrays.equals(bytes(c.sendRpcSync(ByteBuffer.wrap(small), TIMEOUT_MS)), small), "one-way messages then rpc");

        // Streams back to back: replies are matched by order.
        StreamResult s1 = new StreamResult(), s2 = new StreamResult(), s3 = new StreamResult(),
            s4 = new StreamResult(), s5 = new StreamResult();
        c.stream("bytes/1000", s1.callback());
        c.stream("nope", s2.callback());
        c.stream("bytes/0", s3.callback());
        c.stream("bytes/3000000", s4.callback());
        c.stream("bytes/100000000", s5.callback());
        check(Arrays.equals(s1.done.get(TIMEOUT_MS, TimeUnit.MILLISECONDS), pattern(1000)), "stream bytes/1000");
        check("Stream 'nope' was not found.".equals(failureOf(s2.done)), "stream failure text");
        check(s3.done.get(TIMEOUT_MS, TimeUnit.MILLISECONDS).length == 0, "zero-length stream completes");
        check(Arrays.equals(s4.done.get(TIMEOUT_MS, TimeUnit.MILLISECONDS), pattern(3000000)), "stream bytes/3000000");
        String tooBig = failureOf(s5.done);
        check(tooBig != null && tooBig.contains("64 MiB"), "stream over 64 MiB fails: " + tooBig);

        check(Arrays.equals(chunk(c, 1, 3).get(TIMEOUT_MS, TimeUnit.MILLISECONDS), pattern(3000)), "chunk (1,3)");
        check(chunk(c, 1, 0).get(TIMEOUT_MS, TimeUnit.MILLISECONDS).length == 0, "chunk (1,0) empty");
        String f2 = failureOf(chunk(c, 2, 0));
        check(f2 != null && f2.startsWith("Failure while fetching StreamChunkId[streamId=2,chunkIndex=0]: "), "chunk of unknown stream fails: " + f2);
        String f3 = failureOf(chunk(c, 1, 100000));
        check(f3 != null && f3.contains("64 MiB"), "chunk over 64 MiB fails: " + f3);

        CompletableFuture<byte[]> up = new CompletableFuture<>();
        byte[] upBody = pattern(5000);
        c.uploadStream(new NioManagedBuffer(ByteBuffer.wrap("meta".getBytes(StandardCharsets.UTF_8))),
            new NioManagedBuffer(ByteBuffer.wrap(upBody)), new RpcResponseCallback() {
                public void onSuccess(ByteBuffer r) { up.complete(bytes(r)); }
                public void onFailure(Throwable e) { up.completeExceptionally(e); }
            });
        check(Arrays.equals(up.get(TIMEOUT_MS, TimeUnit.MILLISECONDS), upBody), "upload stream echo");

        check(Arrays.equals(bytes(c.sendRpcSync(ByteBuffer.wrap(small), TIMEOUT_MS)), small), "connection still usable");
        c.close();
        factory.close();
        ctx.close();
        System.out.println("ALL OK (Spark TransportClient -> rpcenv echo_server)");
    }

    // ---- server mode -------------------------------------------------------------------

    static final AtomicLong ONE_WAY = new AtomicLong();

    static class EchoStreams extends StreamManager {
        public ManagedBuffer getChunk(long streamId, int chunkIndex) {
            if (streamId != 1) throw new IllegalStateException("Unknown stream " + streamId);
            return new NioManagedBuffer(ByteBuffer.wrap(pattern(chunkIndex * 1000)));
        }
        public ManagedBuffer openStream(String id) {
            if (!id.startsWith("bytes/")) return null;
            return new NioManagedBuffer(ByteBuffer.wrap(pattern(Integer.parseInt(id.substring(6)))));
        }
    }

    static class EchoHandler extends RpcHandler {
        final StreamManager streams = new EchoStreams();
        public void receive(TransportClient client, ByteBuffer message, RpcResponseCallback callback) {
            byte[] b = bytes(message);
            if (new String(b, StandardCharsets.UTF_8).equals("__oneway_count__")) {
                callback.onSuccess(ByteBuffer.wrap(Long.toString(ONE_WAY.get()).getBytes(StandardCharsets.UTF_8)));
            } else if (new String(b, StandardCharsets.UTF_8).equals("__fail__")) {
                callback.onFailure(new RuntimeException("failed on request"));
            } else {
                callback.onSuccess(ByteBuffer.wrap(b));
            }
        }
        public void receive(TransportClient client, ByteBuffer message) { ONE_WAY.incrementAndGet(); }
        public StreamManager getStreamManager() { return streams; }
    }

    static void server() throws Exception {
        TransportConf conf = conf();
        TransportContext ctx = new TransportContext(conf, new EchoHandler());
        TransportServer server = ctx.createServer("127.0.0.1", 0, serverBootstraps(conf));
        System.out.println("listening on 127.0.0.1:" + server.getPort());
        System.out.flush();
        new CountDownLatch(1).await();
    }

    public static void main(String[] args) throws Exception {
        if (args.length == 2 && args[0].equals("client")) {
            client(Integer.parseInt(args[1]));
            System.exit(0);
        } else if (args.length == 2 && args[0].equals("client-auth-fail")) {
            clientAuthFail(Integer.parseInt(args[1]));
            System.exit(0);
        } else if (args.length == 1 && args[0].equals("server")) {
            server();
        } else {
            System.err.println("usage: Interop client PORT | Interop client-auth-fail PORT | Interop server");
            System.exit(2);
        }
    }
}
