#!/usr/bin/env node
// The application side of the soak drill (tests/soak.rs): real BullMQ Workers
// on the soak's queues, logging every job they process, for as long as the
// test lets them run.
//
// Usage:
//   node tests/node/soak-worker.mjs --major 5|6 --redis <url> --queues a,b --log <file>
//
// Appends one JSON line per processed job to the log file:
//   {"queue", "scheduler", "jobId", "runAt", "processedOn"}
// where `runAt` is the run the job was scheduled for: the milliseconds a job
// scheduler writes into the id of each job it makes (`repeat:<id>:<millis>`).
// A Worker `error` (BullMQ failing to schedule the next iteration, a lost
// connection) is appended as {"queue", "error"}. Prints `ready` on stdout once
// every Worker is running, and closes them all on SIGTERM.
import { appendFileSync } from 'node:fs';

function flags(argv) {
  const parsed = {};
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith('--') || i + 1 >= argv.length) {
      throw new Error(`expected --name value pairs, got '${argv[i]}'`);
    }
    parsed[argv[i].slice(2)] = argv[i + 1];
  }
  for (const name of ['major', 'redis', 'queues', 'log']) {
    if (!parsed[name]) throw new Error(`missing --${name}`);
  }
  return parsed;
}

function connectionOf(url) {
  const u = new URL(url);
  return {
    host: u.hostname,
    port: Number(u.port || 6379),
    maxRetriesPerRequest: null, // required by BullMQ Workers
    // Come back quickly when the test restarts Redis.
    retryStrategy: (times) => Math.min(times * 50, 500),
  };
}

// The run a scheduler's job was made for: its id ends in those milliseconds.
function runAt(job) {
  const tail = String(job.id).split(':').pop();
  const millis = Number(tail);
  return Number.isInteger(millis) ? millis : job.opts?.prevMillis ?? null;
}

async function main() {
  const args = flags(process.argv.slice(2));
  const bullmq = await import(args.major === '6' ? 'bullmq6' : 'bullmq5');
  const connection = connectionOf(args.redis);
  const append = (entry) => appendFileSync(args.log, `${JSON.stringify(entry)}\n`);

  const workers = args.queues.split(',').map((queue) => {
    const worker = new bullmq.Worker(
      queue,
      async (job) => {
        append({
          queue,
          scheduler: job.repeatJobKey ?? null,
          jobId: job.id,
          runAt: runAt(job),
          processedOn: Date.now(),
        });
      },
      { connection, concurrency: 4 },
    );
    worker.on('error', (err) => append({ queue, error: String(err?.message ?? err) }));
    return worker;
  });
  await Promise.all(workers.map((worker) => worker.waitUntilReady()));
  process.stdout.write('ready\n');

  const stop = async () => {
    await Promise.all(workers.map((worker) => worker.close()));
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((err) => {
  process.stderr.write(`soak-worker: ${String(err?.message ?? err).split('\n')[0]}\n`);
  process.exit(1);
});
