// A Sparkplug B edge node driven by Eclipse Tahu's sparkplug-client (an independent implementation),
// for plantstream's interop test. Usage: node sparkplug_node.js <mqtt url> <group> <node> <base ms>
//
// Script: NBIRTH (every scalar datatype, aliases) + DBIRTH "press"; 5 NDATA + 5 DDATA by alias;
// one DDATA with an alias no birth announced; a skipped seq (a "lost" message) followed by NDATA,
// then it waits for the host's NCMD Node Control/Rebirth and publishes its births again; then one
// more DDATA, DDEATH, NDEATH. Each step is printed as a JSON line on stdout.
"use strict";
const sparkplug = require("sparkplug-client");

const [url, groupId, edgeNode, baseArg] = process.argv.slice(2);
const base = Number(baseArg);
const out = (ev) => process.stdout.write(JSON.stringify(ev) + "\n");

const client = sparkplug.newClient({
  serverUrl: url,
  username: "",
  password: "",
  groupId,
  edgeNode,
  clientId: `tahu-${groupId}-${edgeNode}`,
  publishDeath: true,
  version: "spBv1.0",
});

function nodeBirth(ts) {
  return {
    timestamp: ts,
    metrics: [
      { name: "i8", alias: 1, type: "Int8", value: -5 },
      { name: "i16", alias: 2, type: "Int16", value: -300 },
      { name: "i32", alias: 3, type: "Int32", value: -70000 },
      { name: "i64", alias: 4, type: "Int64", value: -5000000000 },
      { name: "u8", alias: 5, type: "UInt8", value: 250 },
      { name: "u16", alias: 6, type: "UInt16", value: 65000 },
      { name: "u32", alias: 7, type: "UInt32", value: 4000000000 },
      { name: "u64", alias: 8, type: "UInt64", value: 9007199254740991 },
      { name: "f", alias: 9, type: "Float", value: 1.5 },
      { name: "d", alias: 10, type: "Double", value: 3.141592653589793 },
      { name: "b", alias: 11, type: "Boolean", value: true },
      { name: "s", alias: 12, type: "String", value: "héllo" },
      { name: "dt", alias: 13, type: "DateTime", value: base },
      { name: "Node Control/Rebirth", type: "Boolean", value: false },
    ],
  };
}

function deviceBirth(ts) {
  return {
    timestamp: ts,
    metrics: [
      { name: "Inputs/Force", alias: 100, type: "Double", value: 0.5, properties: { engUnit: { type: "String", value: "kN" } } },
      { name: "Inputs/Count", alias: 101, type: "Int16", value: -1 },
    ],
  };
}

let stage = "start";
client.on("birth", () => {
  if (stage !== "start") return;
  stage = "running";
  client.publishNodeBirth(nodeBirth(base));
  client.publishDeviceBirth("press", deviceBirth(base));
  for (let i = 1; i <= 5; i++) {
    client.publishNodeData({ timestamp: base + i, metrics: [{ alias: 1, type: "Int8", value: -i }, { alias: 4, type: "Int64", value: -i * 1000000000 }] });
    client.publishDeviceData("press", { timestamp: base + i, metrics: [{ alias: 100, type: "Double", value: i + 0.25 }, { alias: 101, type: "Int16", value: -i }] });
  }
  client.publishDeviceData("press", { timestamp: base + 6, metrics: [{ alias: 999, type: "Double", value: 1 }] });
  out({ event: "published", stage: "data" });
  client.incrementSeqNum(); // a message the host never sees
  client.publishNodeData({ timestamp: base + 7, metrics: [{ alias: 5, type: "UInt8", value: 7 }] });
  out({ event: "published", stage: "gap" });
  stage = "waiting";
});

client.on("ncmd", (payload) => {
  const rebirth = (payload.metrics || []).some((m) => m.name === "Node Control/Rebirth" && m.value === true);
  if (!rebirth || stage !== "waiting") return;
  stage = "reborn";
  out({ event: "rebirth" });
  client.publishNodeBirth(nodeBirth(base + 20));
  client.publishDeviceBirth("press", deviceBirth(base + 20));
  client.publishDeviceData("press", { timestamp: base + 21, metrics: [{ alias: 100, type: "Double", value: 42.0 }] });
  client.publishDeviceDeath("press", { timestamp: base + 22 });
  // NDEATH (with the birth's bdSeq) as a clean stop, then exit once it is on the wire.
  setTimeout(() => {
    client.stop();
    out({ event: "done" });
    setTimeout(() => process.exit(0), 300);
  }, 200);
});

client.on("error", (err) => out({ event: "error", error: String(err) }));
setTimeout(() => {
  out({ event: "timeout", stage });
  process.exit(3);
}, 30000);
