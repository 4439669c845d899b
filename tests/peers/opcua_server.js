// An OPC-UA server from node-opcua (an independent implementation) for plantstream's interop tests.
// Usage: node opcua_server.js <port> <pki folder>
// Endpoints: None and Basic256Sha256 Sign/SignAndEncrypt; user "operator" / "s3cret" (no anonymous).
// Variables (namespace urn:plantstream:peer, ns=2): Temperature (Double, +0.5 every 100 ms),
// Counter (Int32, +1 every 100 ms, starts negative), Running (Boolean), Label (String).
// Prints {"event":"ready"} once listening.
"use strict";
const path = require("path");
const {
  OPCUAServer,
  OPCUACertificateManager,
  Variant,
  DataType,
  SecurityPolicy,
  MessageSecurityMode,
} = require("node-opcua");

const [portArg, pkiArg] = process.argv.slice(2);
const port = Number(portArg);

(async () => {
  const serverCertificateManager = new OPCUACertificateManager({
    rootFolder: path.join(pkiArg, "server"),
    automaticallyAcceptUnknownCertificate: true, // the test trusts the client by its own choice
  });
  await serverCertificateManager.initialize();
  const server = new OPCUAServer({
    port,
    hostname: "127.0.0.1",
    resourcePath: "/peer",
    serverCertificateManager,
    securityPolicies: [SecurityPolicy.None, SecurityPolicy.Basic256Sha256],
    securityModes: [MessageSecurityMode.None, MessageSecurityMode.Sign, MessageSecurityMode.SignAndEncrypt],
    allowAnonymous: false,
    userManager: { isValidUser: (user, password) => user === "operator" && password === "s3cret" },
    buildInfo: { productName: "plantstream-peer" },
  });
  await server.initialize();
  const addressSpace = server.engine.addressSpace;
  const ns = addressSpace.registerNamespace("urn:plantstream:peer");
  const line = ns.addObject({ organizedBy: addressSpace.rootFolder.objects, browseName: "Line1" });
  let t = 20.0;
  let n = -5;
  const temperature = ns.addVariable({
    componentOf: line,
    browseName: "Temperature",
    nodeId: "s=Temperature",
    dataType: "Double",
    minimumSamplingInterval: 100,
    value: { get: () => new Variant({ dataType: DataType.Double, value: t }) },
  });
  const counter = ns.addVariable({
    componentOf: line,
    browseName: "Counter",
    nodeId: "s=Counter",
    dataType: "Int32",
    minimumSamplingInterval: 100,
    value: { get: () => new Variant({ dataType: DataType.Int32, value: n }) },
  });
  ns.addVariable({
    componentOf: line,
    browseName: "Running",
    nodeId: "s=Running",
    dataType: "Boolean",
    minimumSamplingInterval: 100,
    value: { get: () => new Variant({ dataType: DataType.Boolean, value: true }) },
  });
  ns.addVariable({
    componentOf: line,
    browseName: "Label",
    nodeId: "s=Label",
    dataType: "String",
    minimumSamplingInterval: 100,
    value: { get: () => new Variant({ dataType: DataType.String, value: "line one" }) },
  });
  setInterval(() => {
    t += 0.5;
    n += 1;
    temperature.touchValue();
    counter.touchValue();
  }, 100);
  await server.start();
  process.stdout.write(JSON.stringify({ event: "ready", endpoint: server.getEndpointUrl() }) + "\n");
  const stop = async () => {
    await server.shutdown(100);
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
})().catch((err) => {
  process.stdout.write(JSON.stringify({ event: "error", error: String(err && err.stack) }) + "\n");
  process.exit(1);
});
