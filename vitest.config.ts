import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    globalSetup: ["test/helpers/global-setup.ts"],
    testTimeout: 120_000,
    hookTimeout: 300_000,
    // Dawn and h5wasm hold native/wasm state per process: run files in forks, a few at a time.
    pool: "forks",
    maxWorkers: 2,
  },
});
