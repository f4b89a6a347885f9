"""SPEED on Flower 1.42: every party a separate process, possibly on another machine.

* :mod:`speed.deploy.server_app` — the ServerApp: the aggregation server
  (:class:`speed.server.AggregationServer`) and the router between parties;
* :mod:`speed.deploy.client_app` — the ClientApp every SuperNode runs, as the model
  owner (:mod:`speed.deploy.owner_node`: secret key, ledger, labels) or as holder i
  (:mod:`speed.deploy.holder_node`), chosen by ``--node-config``;
* :mod:`speed.deploy.records` — ``speed.messages`` in Flower records;
* :mod:`speed.deploy.sealing` — pads sealed owner → holder, unreadable by the router;
* :mod:`speed.deploy.launcher` — what ``deploy local`` and ``deploy simulate`` share: run
  directory, ``flwr run --stream`` relayed, the job summary read from the ServerApp's JSON file,
  every process stopped;
* :mod:`speed.deploy.local` — ``speed deploy local``: the whole federation on loopback;
* :mod:`speed.deploy.simulation` — ``speed deploy simulate``: the same app on Flower's
  simulation engine (N virtual holders + the owner, ray workers);
* :mod:`speed.deploy.tls`, :mod:`speed.deploy.processes` — certificates, node keys,
  process supervision.

See ``docs/deploy.md``.
"""
