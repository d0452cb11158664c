/**
 * Worker messages (src/framework/threads.ts): messages and the exit that arrive while nobody waits are kept,
 * in order, for the next nextMessage; nothing is lost between two waits (before, listeners attached per
 * message could miss one, and the caller waited for ever: a hang under load).
 */
import { describe, expect, test } from "vitest";
import { Worker } from "node:worker_threads";
import { keepMessages, nextMessage } from "../src/framework/threads.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("nextMessage", () => {
  test("messages posted back to back, then the exit, while nobody waits: all kept, in order", async () => {
    const w = keepMessages(
      new Worker(
        "const { parentPort } = require('node:worker_threads'); for (let i = 0; i < 5; i++) parentPort.postMessage(i);",
        { eval: true },
      ),
    );
    await sleep(500); // the worker has posted everything and exited
    const got = [];
    for (let i = 0; i < 5; i++) got.push(await nextMessage<number>(w));
    expect(got).toEqual([0, 1, 2, 3, 4]);
    await expect(nextMessage(w)).rejects.toThrow(/worker exited/);
  });

  test("a worker error rejects the waiter", async () => {
    const w = keepMessages(new Worker("throw new Error('boom')", { eval: true }));
    await expect(nextMessage(w)).rejects.toThrow(/boom/);
  });
});
