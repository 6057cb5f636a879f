"""A Dask cluster for the detector stage's layer fits, for the duration of a stage (``--dask-scheduler``,
``--dask-local``)."""
import contextlib
import logging


@contextlib.contextmanager
def dask_cluster(args):
    """Connects to ``--dask-scheduler`` or starts ``--dask-local N`` workers for the duration of a stage;
    does nothing without those flags. joblib's Dask backend then sends the layer fits to the workers."""
    if not (args.dask_scheduler or args.dask_local):
        yield None
        return
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as e:
        raise RuntimeError("--dask-scheduler / --dask-local need Dask: pip install 'dask[distributed]'") from e
    if args.dask_scheduler:
        with Client(args.dask_scheduler, timeout="30s") as client:
            logging.getLogger("detectors").info(f"layer fits on the Dask cluster at {args.dask_scheduler} "
                                                f"({len(client.scheduler_info()['workers'])} workers)")
            yield client
    else:
        with LocalCluster(n_workers=args.dask_local, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            logging.getLogger("detectors").info(f"layer fits on a local Dask cluster of {args.dask_local} workers")
            yield client
