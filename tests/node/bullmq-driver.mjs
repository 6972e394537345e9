#!/usr/bin/env node
// Test driver for bullmq-warden: runs REAL BullMQ (5.x or 6.x) against Redis.
//
// Usage:
//   node tests/node/bullmq-driver.mjs <command> --major 5|6 --redis <url>
//        [--prefix bull] [--cluster] --queue <name> [command flags]
//
// Commands (input, when needed, is JSON on stdin; output is ONE JSON document
// on stdout; logs go to stderr; errors exit non-zero with one stderr line):
//   upsert-schedulers [--parallel]   stdin: [{id, repeat, name?, data?, opts?}]
//   schedulers                       getJobSchedulersCount + getJobSchedulers
//   counts                           getJobCounts() + isPaused
//   populate-states                  jobs in every state, then pause the queue
//   worker [--until-runs N] [--timeout-ms T] [--scheduler ID]
//   add-legacy-repeatable            (major 5 only) stdin: {name, data, repeat}
//   remove-scheduler --id ID
//   obliterate                       queue.obliterate({force: true})
import { performance } from 'node:perf_hooks';
import { randomUUID } from 'node:crypto';
import IORedis from 'ioredis';

const HOUR_MS = 60 * 60 * 1000;

// ---------------------------------------------------------------- arguments

function parseArgs(argv) {
  const [command, ...rest] = argv;
  const flags = {};
  for (let i = 0; i < rest.length; i++) {
    const arg = rest[i];
    if (!arg.startsWith('--')) throw new Error(`unexpected argument '${arg}'`);
    const eq = arg.indexOf('=');
    if (eq !== -1) {
      flags[arg.slice(2, eq)] = arg.slice(eq + 1);
    } else if (i + 1 < rest.length && !rest[i + 1].startsWith('--')) {
      flags[arg.slice(2)] = rest[++i];
    } else {
      flags[arg.slice(2)] = true;
    }
  }
  return { command, flags };
}

function required(flags, name) {
  const value = flags[name];
  if (value === undefined || value === true) throw new Error(`missing --${name}`);
  return value;
}

function intFlag(flags, name, fallback) {
  if (flags[name] === undefined) return fallback;
  const value = Number(flags[name]);
  if (!Number.isInteger(value) || value < 0) throw new Error(`--${name} must be a non-negative integer`);
  return value;
}

// redis[s]://[user[:password]@]host[:port][/db]  ->  ioredis options
function redisOptions(url) {
  const u = new URL(url);
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') {
    throw new Error(`unsupported Redis URL scheme '${u.protocol}'`);
  }
  const db = u.pathname.replace(/^\//, '');
  return {
    host: u.hostname.replace(/^\[(.*)\]$/, '$1') || '127.0.0.1',
    port: u.port ? Number(u.port) : 6379,
    db: db ? Number(db) : 0,
    username: u.username ? decodeURIComponent(u.username) : undefined,
    password: u.password ? decodeURIComponent(u.password) : undefined,
    tls: u.protocol === 'rediss:' ? {} : undefined,
    maxRetriesPerRequest: null, // required by BullMQ Workers
  };
}

// Fail fast with a clear message instead of letting BullMQ retry forever.
async function checkRedis(connection) {
  const client = new IORedis({ ...connection, lazyConnect: true, connectTimeout: 3000, retryStrategy: () => null });
  let lastError;
  client.on('error', (err) => (lastError = err));
  try {
    await client.connect();
    await client.ping();
  } catch (err) {
    throw new Error(`cannot reach Redis at ${connection.host}:${connection.port}: ${(lastError ?? err).message}`);
  } finally {
    client.disconnect();
  }
}

async function readStdinJson() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  const text = Buffer.concat(chunks).toString('utf8').trim();
  if (!text) throw new Error('expected JSON on stdin');
  return JSON.parse(text);
}

const log = (...args) => console.error('[bullmq-driver]', ...args);

// ---------------------------------------------------------------- commands
// Each command gets ctx = { bullmq, major, connection, prefix, queueName,
// flags, queue } and returns the value to print as JSON.

async function upsertSchedulers({ queue, flags }) {
  const items = await readStdinJson();
  if (!Array.isArray(items)) throw new Error('stdin must be a JSON array of schedulers');
  const upsert = ({ id, repeat, name, data, opts }) => queue.upsertJobScheduler(id, repeat, { name, data, opts });
  await queue.waitUntilReady();

  const start = performance.now();
  if (flags.parallel) {
    await Promise.all(items.map(upsert));
  } else {
    for (const item of items) await upsert(item);
  }
  const elapsedMs = performance.now() - start;

  return { upserted: items.length, elapsedMs };
}

async function schedulers({ queue }) {
  return {
    count: await queue.getJobSchedulersCount(),
    schedulers: await queue.getJobSchedulers(0, -1, true),
  };
}

async function counts({ queue }) {
  return { ...(await queue.getJobCounts()), isPaused: await queue.isPaused() };
}

// The manual's checkQueueStatus over many queues, one after another (the
// scale benchmark's baseline): counts per state and the scheduler count.
async function countsAll({ bullmq, connection, prefix, flags }) {
  const names = String(required(flags, 'queues')).split(',');
  const start = performance.now();
  const counts = {};
  for (const name of names) {
    const queue = new bullmq.Queue(name, { connection, prefix });
    counts[name] = { ...(await queue.getJobCounts()), repeatable: await queue.getJobSchedulersCount() };
    await queue.close();
  }
  return { queues: names.length, elapsedMs: performance.now() - start };
}

async function populateStates({ bullmq, connection, prefix, queueName, queue }) {
  const token = randomUUID();
  // No processor, autorun off: jobs are only fetched by our getNextJob calls.
  const worker = new bullmq.Worker(queueName, null, { connection, prefix, autorun: false });
  const flow = new bullmq.FlowProducer({ connection, prefix });
  try {
    // Fetch one job by hand. The wait list holds only the job just added, so
    // the fetched job is the one we mean.
    const fetch = async (name) => {
      const added = await queue.add(name, { state: name });
      const job = await worker.getNextJob(token);
      if (!job || job.id !== added.id) throw new Error(`fetched an unexpected job for '${name}'`);
      return job;
    };

    for (const name of ['completed-1', 'completed-2']) {
      await (await fetch(name)).moveToCompleted({ ok: true }, token, false);
    }
    await (await fetch('failed-1')).moveToFailed(new Error('populate-states: failed on purpose'), token, false);
    await fetch('active-1'); // stays in the active list (its lock simply expires later)

    await queue.add('delayed-1', { state: 'delayed' }, { delay: HOUR_MS });
    await queue.add('delayed-2', { state: 'delayed' }, { delay: HOUR_MS });
    await queue.add('prioritized-1', { state: 'prioritized' }, { priority: 1 });
    await queue.add('prioritized-2', { state: 'prioritized' }, { priority: 2 });

    // The child lives in another queue with no worker, so the parent stays in
    // waiting-children here.
    await flow.add({
      name: 'parent-1',
      queueName,
      data: { state: 'waiting-children' },
      children: [{ name: 'child-1', queueName: `${queueName}-children`, data: { state: 'child' } }],
    });

    for (const name of ['waiting-1', 'waiting-2', 'waiting-3']) {
      await queue.add(name, { state: 'waiting' });
    }

    // 5.x moves the wait list to the paused list; 6.x only flags the queue.
    await queue.pause();
    await queue.add('added-while-paused-1', { state: 'paused' });
    await queue.add('added-while-paused-2', { state: 'paused' });

    return await queue.getJobCounts();
  } finally {
    await flow.close();
    await worker.close(true); // do not wait for the active job
  }
}

async function runWorker({ bullmq, connection, prefix, queueName, flags }) {
  const untilRuns = intFlag(flags, 'until-runs', 2);
  const timeoutMs = intFlag(flags, 'timeout-ms', 15000);
  const scheduler = typeof flags.scheduler === 'string' ? flags.scheduler : undefined;

  const jobs = [];
  let done;
  const finished = new Promise((resolve) => (done = resolve));
  const timer = setTimeout(() => {
    log(`timeout after ${timeoutMs} ms with ${jobs.length}/${untilRuns} runs`);
    done();
  }, timeoutMs);

  const worker = new bullmq.Worker(
    queueName,
    async (job) => {
      if (scheduler !== undefined && job.repeatJobKey !== scheduler) return;
      if (jobs.length >= untilRuns) return;
      const { id, name, data, repeatJobKey, timestamp, processedOn } = job;
      jobs.push({ id, name, data, repeatJobKey, timestamp, processedOn });
      if (jobs.length >= untilRuns) done();
    },
    { connection, prefix },
  );
  worker.on('error', (err) => log('worker error:', err.message));
  if (untilRuns === 0) done();

  try {
    await finished;
  } finally {
    clearTimeout(timer);
    await worker.close();
  }
  return { runs: jobs.length, jobs };
}

async function addLegacyRepeatable({ major, queue }) {
  if (major !== '5') {
    throw new Error('add-legacy-repeatable is only supported on BullMQ 5 (legacy repeatable jobs were removed in 6)');
  }
  const { name, data, repeat } = await readStdinJson();
  const job = await queue.add(name, data, { repeat });
  return { repeatKey: job.repeatJobKey };
}

async function removeScheduler({ queue, flags }) {
  return { removed: await queue.removeJobScheduler(required(flags, 'id')) };
}

async function obliterate({ queue }) {
  await queue.obliterate({ force: true });
  return { obliterated: true };
}

const COMMANDS = {
  'upsert-schedulers': upsertSchedulers,
  schedulers,
  counts,
  'counts-all': countsAll,
  'populate-states': populateStates,
  worker: runWorker,
  'add-legacy-repeatable': addLegacyRepeatable,
  'remove-scheduler': removeScheduler,
  obliterate,
};

// ---------------------------------------------------------------- main

async function main() {
  const { command, flags } = parseArgs(process.argv.slice(2));
  const run = COMMANDS[command];
  if (!run) throw new Error(`unknown command '${command ?? ''}' (expected one of: ${Object.keys(COMMANDS).join(', ')})`);

  const major = String(required(flags, 'major'));
  if (major !== '5' && major !== '6') throw new Error(`--major must be 5 or 6, got '${major}'`);
  const options = redisOptions(required(flags, 'redis'));
  const prefix = typeof flags.prefix === 'string' ? flags.prefix : 'bull';
  const queueName = required(flags, 'queue');

  // --cluster: the URL names one seed node of a Redis Cluster.
  let connection = options;
  if (flags.cluster) {
    const { username, password } = options;
    connection = new IORedis.Cluster([{ host: options.host, port: options.port }], {
      redisOptions: { username, password, maxRetriesPerRequest: null },
    });
  } else {
    await checkRedis(connection);
  }
  const bullmq = await import(major === '5' ? 'bullmq5' : 'bullmq6');
  const queue = new bullmq.Queue(queueName, { connection, prefix });
  queue.on('error', (err) => log('queue error:', err.message));
  try {
    const result = await run({ bullmq, major, connection, prefix, queueName, flags, queue });
    process.stdout.write(`${JSON.stringify(result)}\n`);
  } finally {
    await queue.close();
    if (flags.cluster) connection.disconnect();
  }
}

main().then(
  () => {
    // Safety net only: everything is closed, so Node should exit by itself.
    setTimeout(() => {
      log('a handle was still open after the command finished; exiting');
      process.exit(0);
    }, 2000).unref();
  },
  (err) => {
    process.stderr.write(`bullmq-driver: ${String(err?.message ?? err).split('\n')[0]}\n`);
    process.exit(1);
  },
);
