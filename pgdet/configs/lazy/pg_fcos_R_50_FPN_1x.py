# PG fine-tuning of detectron2's FCOS R50-FPN 1x (the one-stage method of
# pgdet/modeling/pg/dense_policy_gradient.py: PGFCOS = detectron2's FCOS + the PG term on
# loss_fcos_cls; D = FCOS's own inference, the policy = sigmoid of the class logit), as a
# LazyConfig: detectron2 has FCOS only as a LazyConfig model. Train with lazy_train_net.py:
#   python lazy_train_net.py --config-file pgdet/configs/lazy/pg_fcos_R_50_FPN_1x.py --num-gpus 8 \
#       train.init_checkpoint=<your FCOS R50-FPN 1x model_final.pth>
#
# Model, data (coco_2017_train -> coco_2017_val), input, optimizer: detectron2's own
# COCO-Detection/fcos_R_50_FPN_1x.py, loaded from the installed detectron2 (nothing copied).
# Changed here:
# - the model is pgdet's PGFCOS (same arguments as FCOS, plus `pg`, the PG options as a
#   PGOptions: enabled / gamma / reward_scale = MODEL.PG.ENABLED / GAMMA / REWARD_SCALE,
#   settings.<key> = MODEL.PG.<KEY> in lower case, validated with the YAML path's messages).
#   D uses FCOS's own test_score_thresh, test_topk_candidates, test_nms_thresh and
#   max_detections_per_image, so the PG options hold no thresholds to set;
# - training data go through pgdet's checks (bad boxes clipped or dropped with counts in the
#   log, class ids checked against model.num_classes, unreadable images named);
# - the schedule is the paper's PG stage scaled to this model (Base-PG-3x.yaml for the YAML
#   configs): the paper runs 22.5k iterations of 16 images (360k images, ~3 COCO epochs) at 1/10
#   of the training learning rate, x0.1 after 2/3. FCOS 1x trained with the paper's 16 images
#   per batch at lr 0.01 (90k iterations), so the iterations stay: 22.5k, x0.1 at 15k, at
#   lr 0.01 / 10 = 0.001, no warm-up (a continuation of a converged model).
#   total_batch_size 16 is over all GPUs.
# Weights: detectron2 releases no FCOS checkpoint (its model_zoo.py has no URL for
# fcos_R_50_FPN_1x), so train.init_checkpoint stays the base config's ImageNet R-50. The PG stage
# is a fine-tuning: train FCOS first (detectron2's tools/lazyconfig_train_net.py on
# COCO-Detection/fcos_R_50_FPN_1x.py) and pass its final weights as train.init_checkpoint.
# Run as it is, it starts from ImageNet: a from-scratch check, not the paper's stage.
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from fvcore.common.param_scheduler import MultiStepParamScheduler

from pgdet.data import CheckedDatasetMapper, load_training_dicts
from pgdet.modeling import PGFCOS
from pgdet.modeling.pg import PGSettings
from pgdet.modeling.pg.pg_options import PGOptions

_base = model_zoo.get_config("COCO-Detection/fcos_R_50_FPN_1x.py")
model, dataloader, optimizer, train = _base.model, _base.dataloader, _base.optimizer, _base.train

model._target_ = PGFCOS
# pgdet's one-stage choice, the RetinaNet configs' (made on BCCD val, benchmarks/RESULTS.md §10.3:
# the paper-literal joint estimator collapsed RetinaNet there; FCOS itself is not measured). The
# paper-literal term: model.pg.reward_scale=1.0 model.pg.settings.reward_estimator=joint
# model.pg.settings.suppressor_credit=False model.pg.settings.kept_box_credit=False
# model.pg.settings.advantage_norm=none. Every other MODEL.PG option is at its default.
model.pg = L(PGOptions)(
    enabled=True,
    gamma=1.0,
    reward_scale=0.5,
    settings=L(PGSettings)(reward_estimator="swap", suppressor_credit=True, kept_box_credit=True,
                           advantage_norm="image_max"),
    seed="${train.seed}",
)

dataloader.train.dataset = L(load_training_dicts)(
    names="coco_2017_train", num_classes="${model.num_classes}", filter_empty=True,
    num_classes_key="model.num_classes",
)
dataloader.train.mapper._target_ = CheckedDatasetMapper

train.output_dir = "output/lazy/pg_fcos_R_50_FPN_1x"
train.seed = -1  # detectron2's "random": lazy_train_net.py draws one seed for the run and logs it
train.max_iter = 22500
train.eval_period = 22500
train.checkpointer.period = 7500  # about each COCO epoch

optimizer.lr = 0.001
# x0.1 after 2/3 of train.max_iter (15k of 22.5k): detectron2 runs a scheduler over the fraction
# of training done, so milestones [2, 3] mean 2/3 whatever max_iter is. No warm-up.
lr_multiplier = L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=[2, 3])
