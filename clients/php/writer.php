<?php
// Writer for `valkey-dr drill --clients` (protocol: ../README.md) on phpredis (the C extension,
// Debian php-redis) or Predis (pure PHP, Debian php-predis): `php writer.php phpredis` or
// `php writer.php predis`. Predis reconnects by itself after a connection dropped (resolving the
// name again); phpredis does only when it sees the drop before sending — a command that lost its
// connection leaves the object failed ("went away") for good. Neither drops a connection that
// answers READONLY or times out. The recommended settings bound every call and start a new
// connection after any error.

declare(strict_types=1);

$library = $argv[1] ?? 'phpredis';
$host = getenv('VALKEY_DR_HOST');
$port = (int) getenv('VALKEY_DR_PORT');
$user = getenv('VALKEY_DR_USER') ?: null;
$password = getenv('VALKEY_DR_PASSWORD') ?: null;
$key = getenv('VALKEY_DR_KEY');
$recommended = (getenv('VALKEY_DR_SETTINGS') ?: 'default') === 'recommended';
$deadline = microtime(true) + (float) getenv('VALKEY_DR_SECONDS');

function now_ms(): int
{
    return (int) floor(microtime(true) * 1000);
}

/** One connection's worth of a library: `push` writes, `reset` drops the connection. */
interface Connection
{
    public function push(string $key, int $value): void;
    public function reset(): void;
}

final class PhpRedis implements Connection
{
    private ?Redis $redis = null;

    public function __construct(
        private string $host,
        private int $port,
        private ?string $user,
        private ?string $password,
        private bool $recommended,
    ) {
    }

    private function connection(): Redis
    {
        if ($this->redis === null) {
            $redis = new Redis();
            // Defaults: connect and read wait for PHP's default_socket_timeout (60 s).
            $timeout = $this->recommended ? 1.0 : 0.0;
            $redis->connect($this->host, $this->port, $timeout, null, 0, $timeout);
            if ($this->password !== null) {
                $redis->auth($this->user !== null ? [$this->user, $this->password] : $this->password);
            }
            $this->redis = $redis;
        }
        return $this->redis;
    }

    public function push(string $key, int $value): void
    {
        $this->connection()->rPush($key, (string) $value);
    }

    public function reset(): void
    {
        try {
            $this->redis?->close();
        } catch (Throwable) {
        }
        $this->redis = null;
    }
}

final class PredisClient implements Connection
{
    private Predis\Client $client;

    public function __construct(string $host, int $port, ?string $user, ?string $password, bool $recommended)
    {
        require_once 'Predis/autoload.php';
        $parameters = ['host' => $host, 'port' => $port];
        if ($password !== null) {
            $parameters['password'] = $password;
            if ($user !== null) {
                $parameters['username'] = $user;
            }
        }
        if ($recommended) {
            // Defaults: 5 s to connect, PHP's default_socket_timeout (60 s) to read.
            $parameters['timeout'] = 1.0;
            $parameters['read_write_timeout'] = 1.0;
        }
        $this->client = new Predis\Client($parameters);
    }

    public function push(string $key, int $value): void
    {
        $this->client->rpush($key, [(string) $value]);
    }

    public function reset(): void
    {
        $this->client->disconnect();
    }
}

$connection = match ($library) {
    'phpredis' => new PhpRedis($host, $port, $user, $password, $recommended),
    'predis' => new PredisClient($host, $port, $user, $password, $recommended),
    default => throw new InvalidArgumentException("unknown library `$library`: phpredis or predis"),
};

// The writes run in a child that reports each outcome on a pipe; this process keeps the counts
// and answers SIGTERM at once even while the child waits on a hung node (PHP's blocking socket
// reads do not give way to a signal handler).
[$reports, $child_end] = stream_socket_pair(STREAM_PF_UNIX, STREAM_SOCK_STREAM, STREAM_IPPROTO_IP);
$child = pcntl_fork();
if ($child === 0) {
    fclose($reports);
    $seq = 0;
    while (microtime(true) < $deadline) {
        try {
            $connection->push($key, $seq);
            $seq++;
            fwrite($child_end, 'ack ' . now_ms() . "\n");
        } catch (Throwable $e) {
            $message = str_replace("\n", ' ', $e->getMessage());
            fwrite($child_end, 'err ' . get_class($e) . ': ' . $message . "\n");
            // A demoted primary answers READONLY on a working connection, and a timed-out one
            // stays open: drop it, so that the next call connects and resolves the name again.
            if ($recommended) {
                $connection->reset();
            }
        }
        usleep(1000);
    }
    exit(0);
}
fclose($child_end);

$stopping = false;
pcntl_async_signals(true);
pcntl_signal(SIGTERM, function () use (&$stopping) {
    $stopping = true;
});

$acked = $readonly = $other = 0;
$gaps = [];
$firstError = null;
$lastAck = now_ms();
$buffer = '';
while (!$stopping) {
    $read = [$reports];
    $write = $except = null;
    // Interrupted by the signal (false) or nothing yet (0): look at `$stopping` again.
    if (!@stream_select($read, $write, $except, 0, 50_000)) {
        continue;
    }
    $chunk = fread($reports, 65536);
    if ($chunk === '' || $chunk === false) {
        break; // the child is done
    }
    $buffer .= $chunk;
    while (($end = strpos($buffer, "\n")) !== false) {
        [$kind, $detail] = explode(' ', substr($buffer, 0, $end), 2);
        $buffer = substr($buffer, $end + 1);
        if ($kind === 'ack') {
            $at = (int) $detail;
            if ($at - $lastAck > 20) {
                $gaps[] = [$lastAck, $at];
            }
            $lastAck = $at;
            $acked++;
            if ($acked === 1) {
                echo "ready\n";
            }
            continue;
        }
        if (str_contains($detail, 'READONLY')) {
            $readonly++;
        } else {
            $other++;
        }
        $firstError ??= $detail;
    }
}
posix_kill($child, SIGKILL);
pcntl_waitpid($child, $status);
echo json_encode([
    'acked' => $acked,
    'readonly_errors' => $readonly,
    'other_errors' => $other,
    'gaps' => $gaps,
    'last_ack_ms' => $lastAck,
    'stopped_ms' => now_ms(),
    'first_error' => $firstError,
]), "\n";
