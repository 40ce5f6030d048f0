// Interop harness: Spark's own network-common (from pyspark's jars) against rpcenv-transport.
//
//   java Interop client PORT   drive our echo_server with Spark's TransportClient
//   java Interop server        run Spark's TransportServer with an echo RpcHandler; prints
//                              "listening on 127.0.0.1:PORT" and serves until killed
//   java Interop client-auth-fail PORT
//                              expect Spark's client to be refused by our server (exit 0 if so);
//                              the refusal must contain -Dinterop.expect (default
//                              "Authentication failed")
//   java Interop record        run Spark's SparkSaslClient / SparkSaslServer (and the JDK's
//                              DIGEST-MD5 directly for the rc4 and des ciphers) in memory and
//                              print the exchange and wrapped messages as a transcript
//
// Every system property starting with "spark." goes into the TransportConf (e.g.
// -Dspark.network.crypto.enabled=true, -Dspark.ssl.rpc.enabled=true). With -Dinterop.secret=S
// (and -Dinterop.appId=ID, default sparkSaslUser) the client adds Spark's AuthClientBootstrap and
// the server Spark's AuthServerBootstrap (which fall back to SASL with
// -Dspark.network.crypto.saslFallback=true); with -Dinterop.sasl=true instead Spark's
// SaslClientBootstrap / SaslServerBootstrap (QOP from spark.authenticate.enableSaslEncryption
// and spark.network.sasl.serverAlwaysEncrypt).
//
// The echo handlers keep every one-way message; the RPC "__oneway_dump__" answers them all, each
// as [i32 length][bytes], so a client can check one-way delivery byte for byte.
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
import org.apache.spark.network.sasl.SaslClientBootstrap;
import org.apache.spark.network.sasl.SaslServerBootstrap;
import org.apache.spark.network.sasl.SecretKeyHolder;
import org.apache.spark.network.sasl.SparkSaslClient;
import org.apache.spark.network.sasl.SparkSaslServer;
import javax.security.auth.callback.*;
import javax.security.sasl.*;
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
    static final boolean SASL = Boolean.getBoolean("interop.sasl");

    /** Knows one app id and its secret (a server refuses any other app id). */
    static SecretKeyHolder holder() {
        return new SecretKeyHolder() {
            public String getSaslUser(String appId) { return appId; }
            public String getSecretKey(String appId) { return APP_ID.equals(appId) ? SECRET : null; }
        };
    }

    static List<TransportClientBootstrap> clientBootstraps(TransportConf conf) {
        List<TransportClientBootstrap> l = new ArrayList<>();
        if (SECRET != null) {
            l.add(SASL ? new SaslClientBootstrap(conf, APP_ID, holder())
                       : new AuthClientBootstrap(conf, APP_ID, holder()));
        }
        return l;
    }

    static List<TransportServerBootstrap> serverBootstraps(TransportConf conf) {
        List<TransportServerBootstrap> l = new ArrayList<>();
        if (SECRET != null) {
            l.add(SASL ? new SaslServerBootstrap(conf, holder()) : new AuthServerBootstrap(conf, holder()));
        }
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
            String expect = System.getProperty("interop.expect", "Authentication failed");
            check(all.toString().contains(expect), "Spark client refused (" + expect + "): " + all);
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
        for (int n : new int[] {1, 65535, 65536, 65537, 1 << 20, 4 << 20}) {
            byte[] b = pattern(n);
            check(Arrays.equals(bytes(c.sendRpcSync(ByteBuffer.wrap(b), TIMEOUT_MS)), b), "rpc " + n + "-byte echo");
        }

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

        java.io.ByteArrayOutputStream sent = new java.io.ByteArrayOutputStream();
        List<byte[]> oneWays = new ArrayList<>();
        for (int i = 0; i < 10; i++) oneWays.add(("one-way-" + i).getBytes(StandardCharsets.UTF_8));
        oneWays.add(new byte[0]);
        oneWays.add(pattern(100000));
        oneWays.add(pattern(1 << 20));
        for (byte[] m : oneWays) {
            c.send(ByteBuffer.wrap(m));
            sent.write(ByteBuffer.allocate(4).putInt(m.length).array(), 0, 4);
            sent.write(m, 0, m.length);
        }
        byte[] dump = bytes(c.sendRpcSync(ByteBuffer.wrap("__oneway_dump__".getBytes(StandardCharsets.UTF_8)), TIMEOUT_MS));
        check(Arrays.equals(dump, sent.toByteArray()), "13 one-way messages (0 B .. 1 MiB) arrive byte-exact");

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
    static final java.io.ByteArrayOutputStream ONE_WAY_LOG = new java.io.ByteArrayOutputStream();

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
            if (new String(b, StandardCharsets.UTF_8).equals("__oneway_dump__")) {
                byte[] all;
                synchronized (ONE_WAY_LOG) { all = ONE_WAY_LOG.toByteArray(); ONE_WAY_LOG.reset(); }
                callback.onSuccess(ByteBuffer.wrap(all));
            } else if (new String(b, StandardCharsets.UTF_8).equals("__oneway_count__")) {
                callback.onSuccess(ByteBuffer.wrap(Long.toString(ONE_WAY.get()).getBytes(StandardCharsets.UTF_8)));
            } else if (new String(b, StandardCharsets.UTF_8).equals("__fail__")) {
                callback.onFailure(new RuntimeException("failed on request"));
            } else {
                callback.onSuccess(ByteBuffer.wrap(b));
            }
        }
        public void receive(TransportClient client, ByteBuffer message) {
            ONE_WAY.incrementAndGet();
            byte[] b = bytes(message);
            synchronized (ONE_WAY_LOG) {
                if (ONE_WAY_LOG.size() < (64 << 20)) {
                    ONE_WAY_LOG.write(ByteBuffer.allocate(4).putInt(b.length).array(), 0, 4);
                    ONE_WAY_LOG.write(b, 0, b.length);
                }
            }
        }
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

    // ---- record mode -------------------------------------------------------------------

    static String hex(byte[] b) {
        StringBuilder sb = new StringBuilder();
        for (byte x : b) sb.append(String.format("%02x", x));
        return sb.toString();
    }

    /** wrap or unwrap of a SASL client or server (Spark's or the JDK's). */
    interface Op { byte[] apply(byte[] b, int off, int len) throws Exception; }

    /** Wrap a few messages each way and print plaintext and wrapped bytes. */
    static void recordWraps(Op clientWrap, Op clientUnwrap, Op serverWrap, Op serverUnwrap) throws Exception {
        byte[][] msgs = { "hello".getBytes(StandardCharsets.UTF_8), pattern(1), pattern(7), pattern(8),
                          pattern(9), pattern(1000) };
        for (int i = 0; i < msgs.length; i++) {
            byte[] m = msgs[i];
            byte[] w = clientWrap.apply(m, 0, m.length);
            check(Arrays.equals(serverUnwrap.apply(w, 0, w.length), m), "server unwraps client message " + i);
            System.out.println("c2s=" + hex(m) + ":" + hex(w));
            byte[] v = serverWrap.apply(m, 0, m.length);
            check(Arrays.equals(clientUnwrap.apply(v, 0, v.length), m), "client unwraps server message " + i);
            System.out.println("s2c=" + hex(m) + ":" + hex(v));
        }
    }

    /** One DIGEST-MD5 exchange: the client's steps and the server's, each token printed. */
    interface Step { byte[] apply(byte[] token) throws Exception; }

    static void recordExchange(String name, boolean encrypt, byte[] first, Step server, Step client) throws Exception {
        System.out.println("case=" + name);
        System.out.println("app_id=" + APP_ID);
        System.out.println("secret=" + SECRET);
        System.out.println("encrypt=" + encrypt);
        byte[] challenge = server.apply(first);
        System.out.println("challenge=" + new String(challenge, StandardCharsets.UTF_8));
        byte[] response = client.apply(challenge);
        System.out.println("response=" + new String(response, StandardCharsets.UTF_8));
        byte[] rspauth = server.apply(response);
        System.out.println("rspauth=" + new String(rspauth, StandardCharsets.UTF_8));
        client.apply(rspauth);
    }

    /** Spark's own SASL classes, as its bootstraps drive them. */
    static void recordSpark(String name, boolean encrypt, boolean alwaysEncrypt) throws Exception {
        SparkSaslClient client = new SparkSaslClient(APP_ID, holder(), encrypt);
        SparkSaslServer server = new SparkSaslServer(APP_ID, holder(), alwaysEncrypt);
        recordExchange(name, encrypt, client.firstToken(), server::response, client::response);
        check(client.isComplete() && server.isComplete(), name + ": both sides complete");
        if (encrypt) recordWraps(client::wrap, client::unwrap, server::wrap, server::unwrap);
        System.out.println("end");
    }

    /** The JDK's DIGEST-MD5 with Spark's parameters and a chosen cipher (Spark offers no choice). */
    static void recordJdk(String cipher) throws Exception {
        String user = SparkSaslServer.encodeIdentifier(APP_ID);
        char[] password = SparkSaslServer.encodePassword(SECRET);
        CallbackHandler handler = callbacks -> {
            for (Callback cb : callbacks) {
                if (cb instanceof NameCallback) ((NameCallback) cb).setName(user);
                else if (cb instanceof PasswordCallback) ((PasswordCallback) cb).setPassword(password);
                else if (cb instanceof RealmCallback) ((RealmCallback) cb).setText(((RealmCallback) cb).getDefaultText());
                else if (cb instanceof AuthorizeCallback) ((AuthorizeCallback) cb).setAuthorized(true);
            }
        };
        Map<String, String> cprops = new HashMap<>();
        cprops.put(Sasl.QOP, "auth-conf");
        cprops.put("com.sun.security.sasl.digest.cipher", cipher);
        Map<String, String> sprops = new HashMap<>();
        sprops.put(Sasl.QOP, "auth-conf,auth");
        SaslClient client = Sasl.createSaslClient(new String[] {"DIGEST-MD5"}, null, null, "default", cprops, handler);
        SaslServer server = Sasl.createSaslServer("DIGEST-MD5", null, "default", sprops, handler);
        recordExchange("jdk-" + cipher, true, new byte[0], server::evaluateResponse, client::evaluateChallenge);
        check(client.isComplete() && server.isComplete(), cipher + ": both sides complete");
        recordWraps(client::wrap, client::unwrap, server::wrap, server::unwrap);
        System.out.println("end");
    }

    static void record() throws Exception {
        recordSpark("spark-auth", false, false);
        recordSpark("spark-auth-conf", true, false);
        recordSpark("spark-always-encrypt", true, true);
        for (String c : new String[] {"rc4", "des", "rc4-56", "rc4-40"}) recordJdk(c);
    }

    public static void main(String[] args) throws Exception {
        if (args.length == 2 && args[0].equals("client")) {
            client(Integer.parseInt(args[1]));
            System.exit(0);
        } else if (args.length == 2 && args[0].equals("client-auth-fail")) {
            clientAuthFail(Integer.parseInt(args[1]));
            System.exit(0);
        } else if (args.length == 1 && args[0].equals("record")) {
            record();
            System.exit(0);
        } else if (args.length == 1 && args[0].equals("server")) {
            server();
        } else {
            System.err.println("usage: Interop client PORT | Interop client-auth-fail PORT | Interop record | Interop server");
            System.exit(2);
        }
    }
}
