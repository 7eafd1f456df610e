"""A real OTLP trace receiver for weft's trace tests, built from the
official OpenTelemetry protobuf definitions (the `opentelemetry-proto`
package) with grpcio: OTLP/gRPC (TraceService/Export) and OTLP/HTTP
protobuf (POST /v1/traces). Every span received is appended to OUT as one
JSON line: its ids in hex, kind, times, attributes, status, the resource's
attributes and the protocol it came over.

usage: otlp_receiver.py HOST GRPC_PORT HTTP_PORT OUT
"""
import http.server
import json
import sys
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)

LOCK = threading.Lock()


def value(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind in ("array_value", "kvlist_value", "bytes_value"):
        return str(getattr(v, kind))
    return getattr(v, kind)


def attributes(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


def dump(request, protocol, out):
    lines = []
    for rs in request.resource_spans:
        resource = attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                lines.append(
                    json.dumps(
                        {
                            "protocol": protocol,
                            "resource": resource,
                            "scope": ss.scope.name,
                            "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(),
                            "parent_span_id": s.parent_span_id.hex(),
                            "trace_state": s.trace_state,
                            "name": s.name,
                            "kind": s.kind,
                            "start_ns": s.start_time_unix_nano,
                            "end_ns": s.end_time_unix_nano,
                            "attributes": attributes(s.attributes),
                            "status": s.status.code,
                        }
                    )
                )
    with LOCK:
        with open(out, "a") as f:
            for line in lines:
                f.write(line + "\n")


class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, out):
        self.out = out

    def Export(self, request, context):
        dump(request, "grpc", self.out)
        return trace_service_pb2.ExportTraceServiceResponse()


def http_handler(out):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            if self.path != "/v1/traces":
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            request = trace_service_pb2.ExportTraceServiceRequest()
            request.ParseFromString(body)
            dump(request, "http/protobuf", out)
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    return Handler


def main():
    host, grpc_port, http_port, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    open(out, "w").close()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(out), server)
    server.add_insecure_port(f"{host}:{grpc_port}")
    server.start()
    httpd = http.server.ThreadingHTTPServer((host, http_port), http_handler(out))
    print("ready", flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
