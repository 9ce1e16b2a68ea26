"""The network-namespace lab behind ``ebpflb lab`` and the traffic tests: a node
namespace (where the agent runs), backend pods running ``podserver`` and a client,
wired as routed, bridge-less veths so that no lab address or route ever touches the
root namespace.

``netns`` steps in and out of namespaces, ``layout`` plans a lab, ``build`` builds
and removes it, ``processes`` runs its pod servers, ``traffic`` sends requests from
inside one, ``podserver`` is what the pods run;
``underlay`` joins the nodes of a multi-node lab and ``kubeobjects`` describes them
to Kubernetes (Node objects, EndpointSlice endpoints).
This package imports nothing heavy, so ``podserver`` starts fast.
"""
