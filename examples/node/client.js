// A small promise-based client of tenantgate's DecisionService, built at run time from the .proto files
// with @grpc/proto-loader: no generated code, the contract in protos/ is all a Node service needs.
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';

// protos/ at the repository root; copy it beside your service and point here to use this file elsewhere.
const PROTOS = fileURLToPath(new URL('../../protos/', import.meta.url));

// How protobuf messages look in JavaScript. Each choice is deliberate:
export const LOADER_OPTIONS = {
  keepCase: true, // field names as the .proto, grpcurl and the docs spell them: tenant_id, not tenantId
  enums: String, // 'DECISION_REASON_ALLOWED' rather than 1: readable, and stable if numbers were ever added
  longs: String, // uint64 (revisions, quota counts) as exact decimal strings: Number loses precision past 2^53
  defaults: true, // proto3 leaves false, 0 and '' off the wire; filled in, a deny reads allowed === false
  oneofs: true, // a batch result says which case it holds: result.outcome is 'decision' or 'error'
  includeDirs: [PROTOS], // google/protobuf/{duration,timestamp}.proto come with proto-loader
};

// The caller's identity when the server runs with --trust-caller-metadata (as `make run` does, on loopback);
// under mutual TLS the client certificate names the caller instead.
export const CALLER_METADATA = 'x-tenantgate-caller';

export function loadDecisionService() {
  const definition = protoLoader.loadSync('tenantgate/v1/decision.proto', LOADER_OPTIONS);
  return grpc.loadPackageDefinition(definition).tenantgate.v1.DecisionService;
}

const lowerCamel = (name) => name[0].toLowerCase() + name.slice(1);

// One method per RPC, named in lowerCamelCase (CheckAccess -> checkAccess), each returning a promise:
//   const answer = await client.checkAccess({tenant_id: 'acme', subject: 'user:alice', ...});
//   await client.getTenantKey({tenant_id: 'acme', purpose: 'data'}, {caller: 'service:storage'});
// Every call has a deadline (deadlineMs, 5 s unless given). A failed call rejects with an Error carrying the
// gRPC status: error.code (compare with grpc.status.NOT_FOUND etc.), error.details, error.metadata.
// A deny is not an error: it resolves with allowed === false and a reason.
export class DecisionClient {
  constructor(address, { credentials = grpc.credentials.createInsecure(), deadlineMs = 5000, caller } = {}) {
    const DecisionService = loadDecisionService();
    this.stub = new DecisionService(address, credentials);
    this.deadlineMs = deadlineMs;
    this.caller = caller;
    this.rpcs = Object.keys(DecisionService.service);
    for (const rpc of this.rpcs) {
      const call = promisify(this.stub[rpc].bind(this.stub));
      this[lowerCamel(rpc)] = (request, options = {}) =>
        call(request, this.#metadata(options), this.#callOptions(options));
    }
  }

  #metadata({ caller = this.caller }) {
    const metadata = new grpc.Metadata();
    if (caller) metadata.set(CALLER_METADATA, caller);
    return metadata;
  }

  #callOptions({ deadlineMs = this.deadlineMs }) {
    return { deadline: new Date(Date.now() + deadlineMs) };
  }

  // Resolves once the channel is connected; rejects when it is not by the deadline.
  waitForReady(deadlineMs = this.deadlineMs) {
    return promisify(this.stub.waitForReady.bind(this.stub))(new Date(Date.now() + deadlineMs));
  }

  close() {
    this.stub.close();
  }
}

export { grpc };
