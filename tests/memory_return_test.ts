/** Memory return (src/memory_return.ts): available where `deno task start` runs on Linux. */
import assert from "node:assert/strict";
import { startMemoryReturn } from "../src/memory_return.ts";

Deno.test({
  name: "memory return: on Linux with FFI a trimmer starts (glibc malloc_trim) and stops",
  ignore: Deno.build.os !== "linux",
  fn() {
    const r = startMemoryReturn();
    assert.ok(r, "libc.so.6 malloc_trim is available");
    r.stop();
  },
});
