// Runs a Kafka tool's main() once per line of a file (tab-separated arguments), all in one
// JVM and several at a time: a JVM start costs seconds on a small machine, and
// deploy/acls.txt needs a dozen calls. If any call fails (the tool's Exit.exit(1), or an
// exception), the batch exits 1 after naming the line.
//
// Usage (Java's single-file source launcher): java -cp 'libs/*' Batch.java CLASS FILE
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.stream.Collectors;

public class Batch {
    public static void main(String[] args) throws Exception {
        Method main = Class.forName(args[0]).getMethod("main", String[].class);
        List<String> lines = Files.readAllLines(Path.of(args[1])).stream()
            .filter(line -> !line.isBlank())
            .collect(Collectors.toList());
        ExecutorService pool = Executors.newFixedThreadPool(8);
        List<Future<?>> calls = lines.stream()
            .map(line -> pool.submit(() -> call(main, args[0], line)))
            .collect(Collectors.toList());
        for (Future<?> call : calls) {
            call.get();
        }
        pool.shutdown();
    }

    private static void call(Method main, String tool, String line) {
        try {
            main.invoke(null, (Object) line.split("\t"));
        } catch (InvocationTargetException | IllegalAccessException e) {
            System.err.println("Batch: " + tool + " failed on: " + line);
            e.printStackTrace();
            System.exit(1);
        }
    }
}
