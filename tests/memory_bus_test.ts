/** The shared bus contract on {@link MemoryBus}. */
import { MemoryBus } from "../src/memory_bus.ts";
import { busContract } from "./bus_contract.ts";

busContract("memory bus", (limit) => {
  const bus = new MemoryBus(limit);
  return Promise.resolve({ bus, close: () => bus.close() });
});
