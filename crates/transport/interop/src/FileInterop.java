// File-server interop harness: Spark's own NettyRpcEnv (from pyspark's jars) against rpcenv's
// file server and open_channel.
//
//   java FileInterop serve DIR   run a server-mode NettyRpcEnv on 127.0.0.1 (port 0) whose file
//                                server has addFile for every file in DIR/files, addJar for every
//                                file in DIR/jars and addDirectory("/dir1", DIR/dir1); prints
//                                "listening on 127.0.0.1:PORT", then "serving <uri>" per
//                                registration, and serves until killed
//   java FileInterop fetch (get URI FILE | missing URI)...
//                                a client-mode NettyRpcEnv opens every URI with openChannel:
//                                "get" reads it whole and compares its length and SHA-256 with
//                                FILE; "missing" expects the read to fail with exactly Spark's
//                                "Stream '<decoded path>' was not found."; and
//                                "unauthenticated-refused URI" opens URI from a second client env
//                                without authentication and expects a failure, not the file
//
// The SparkConf is built from the -Dspark.* system properties (e.g. -Dspark.authenticate=true
// -Dspark.authenticate.secret=S -Dspark.network.crypto.enabled=true for AES authentication).
//
// Fetch mode prints "ok <check>" per passed check and exits 1 on the first mismatch.

import java.io.File;
import java.io.FileInputStream;
import java.io.InputStream;
import java.net.URI;
import java.nio.ByteBuffer;
import java.nio.channels.ReadableByteChannel;
import java.security.MessageDigest;
import java.util.Arrays;
import java.util.HexFormat;

import org.apache.spark.SecurityManager;
import org.apache.spark.SparkConf;
import org.apache.spark.rpc.RpcEnv;
import org.apache.spark.rpc.RpcEnvFileServer;

public class FileInterop {
    static final long WATCHDOG_MS = 180_000;

    static void fail(String what) {
        System.out.println("MISMATCH " + what);
        System.out.flush();
        System.exit(1);
    }

    static void ok(String what) {
        System.out.println("ok " + what);
        System.out.flush();
    }

    static RpcEnv env(String name, boolean clientMode) {
        return env(name, clientMode, new SparkConf()); // loads the -Dspark.* system properties
    }

    static RpcEnv env(String name, boolean clientMode, SparkConf conf) {
        SecurityManager sm = new SecurityManager(conf,
            SecurityManager.$lessinit$greater$default$2(),
            SecurityManager.$lessinit$greater$default$3());
        sm.initializeAuth();
        return RpcEnv.create(name, "127.0.0.1", 0, conf, sm, clientMode);
    }

    static File[] listed(File dir) {
        File[] files = dir.listFiles();
        if (files == null) return new File[0];
        Arrays.sort(files);
        return files;
    }

    static void serve(File root) throws Exception {
        RpcEnv env = env("file-interop-server", false);
        RpcEnvFileServer server = env.fileServer();
        System.out.println("listening on 127.0.0.1:" + env.address().port());
        for (File f : listed(new File(root, "files"))) {
            System.out.println("serving " + server.addFile(f));
        }
        for (File f : listed(new File(root, "jars"))) {
            System.out.println("serving " + server.addJar(f));
        }
        System.out.println("serving " + server.addDirectory("/dir1", new File(root, "dir1")));
        System.out.flush();
        env.awaitTermination();
    }

    static String sha256(InputStream in) throws Exception {
        MessageDigest md = MessageDigest.getInstance("SHA-256");
        byte[] buf = new byte[1 << 16];
        int n;
        while ((n = in.read(buf)) > 0) md.update(buf, 0, n);
        return HexFormat.of().formatHex(md.digest());
    }

    /** Reads the channel to its end; returns {length, sha256}. */
    static String[] drain(ReadableByteChannel ch) throws Exception {
        MessageDigest md = MessageDigest.getInstance("SHA-256");
        ByteBuffer buf = ByteBuffer.allocate(1 << 16);
        long total = 0;
        try {
            while (true) {
                buf.clear();
                int n = ch.read(buf);
                if (n < 0) break;
                buf.flip();
                total += n;
                md.update(buf);
            }
        } finally {
            ch.close();
        }
        return new String[] {Long.toString(total), HexFormat.of().formatHex(md.digest())};
    }

    static boolean chainHasMessage(Throwable t, String expected) {
        for (Throwable c = t; c != null; c = c.getCause()) {
            if (expected.equals(c.getMessage())) return true;
        }
        return false;
    }

    static void fetch(String[] args) throws Exception {
        RpcEnv env = env("file-interop-client", true);
        try {
            for (int i = 1; i < args.length; ) {
                String op = args[i];
                if (op.equals("get") && i + 2 < args.length) {
                    String uri = args[i + 1];
                    File expected = new File(args[i + 2]);
                    i += 3;
                    String[] got = drain(env.openChannel(uri));
                    String want;
                    try (InputStream in = new FileInputStream(expected)) {
                        want = sha256(in);
                    }
                    if (Long.parseLong(got[0]) != expected.length() || !got[1].equals(want)) {
                        fail("fetched " + uri + ": " + got[0] + " bytes sha256 " + got[1]
                            + ", expected " + expected.length() + " bytes sha256 " + want);
                    }
                    ok("Spark openChannel fetched " + uri + " byte-exactly (" + got[0] + " bytes)");
                } else if (op.equals("missing") && i + 1 < args.length) {
                    String uri = args[i + 1];
                    i += 2;
                    String expected = "Stream '" + new URI(uri).getPath() + "' was not found.";
                    try {
                        String[] got = drain(env.openChannel(uri));
                        fail("a missing file was served: " + uri + " (" + got[0] + " bytes)");
                    } catch (Exception e) {
                        if (!chainHasMessage(e, expected)) {
                            e.printStackTrace();
                            fail(uri + ": expected the error \"" + expected + "\", got " + e);
                        }
                    }
                    ok("Spark openChannel of " + uri + " failed with \"" + expected + "\"");
                } else if (op.equals("unauthenticated-refused") && i + 1 < args.length) {
                    String uri = args[i + 1];
                    i += 2;
                    SparkConf plain = new SparkConf()
                        .set("spark.authenticate", "false")
                        .set("spark.network.crypto.enabled", "false");
                    RpcEnv unauthenticated = env("file-interop-unauthenticated", true, plain);
                    try {
                        String[] got = drain(unauthenticated.openChannel(uri));
                        fail("served to an unauthenticated client: " + uri + " (" + got[0] + " bytes)");
                    } catch (Exception e) {
                        ok("Spark openChannel without authentication of " + uri + " refused: " + e);
                    } finally {
                        unauthenticated.shutdown();
                    }
                } else {
                    fail("bad arguments at " + op);
                }
            }
        } finally {
            env.shutdown();
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length == 2 && args[0].equals("serve")) {
            serve(new File(args[1]));
        } else if (args.length >= 1 && args[0].equals("fetch")) {
            // Every check is bounded: a read that never ends fails the run instead of hanging it.
            Thread watchdog = new Thread(() -> {
                try {
                    Thread.sleep(WATCHDOG_MS);
                } catch (InterruptedException e) {
                    return;
                }
                fail("the checks did not finish within " + WATCHDOG_MS + " ms");
            });
            watchdog.setDaemon(true);
            watchdog.start();
            fetch(args);
            System.exit(0);
        } else {
            System.err.println("usage: FileInterop serve DIR | FileInterop fetch (get URI FILE | missing URI)...");
            System.exit(2);
        }
    }
}
